"""Ray actor hosting one rollout engine and its streaming loop (embedded mode). Thin on purpose:
everything it does is a call into rollout_service."""

from __future__ import annotations

import ray

from protocol.config import RunConfig
from protocol.queue import connect
from rollout_service.engine import Engine
from rollout_service.streaming import Prompt, Rollouts
from rollout_service.weights import BroadcastReceiver, load_from_url


@ray.remote(max_concurrency=4)  # a weight update blocks one thread; submit/version need others
class RolloutActor:
    def __init__(self, config_json: str, model: str | None = None, version: int = 0) -> None:
        cfg = RunConfig.model_validate_json(config_json)
        if not cfg.redis.url:
            raise ValueError("redis.url: the rollout actor streams into Redis; start one first")
        self._engine = Engine(model or cfg.rollout.model, cfg.rollout, version=version)
        self._rollouts = Rollouts(self._engine, connect(cfg.redis.url), cfg.run.name, cfg.rollout,
                                  cfg.redis.max_backlog)
        self._receiver = BroadcastReceiver(self._engine)
        self._backend = cfg.rollout.weight_backend

    def submit(self, prompts: list[dict]) -> list[str]:
        """Queue prompts (Prompt fields as dicts), blocking while the loop is full; group ids."""
        return [self._rollouts.submit(Prompt.model_validate(p), block=True) for p in prompts]

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._rollouts.wait_idle(timeout)

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int) -> None:
        self._receiver.join(host, port, rank, world_size, self._backend)

    def update_weights_broadcast(self, buffer: bool = True) -> tuple[int, float]:
        """Receive the version the learner is broadcasting now; returns (version, load seconds)."""
        manifest, seconds = self._receiver.load(buffer=buffer)
        return manifest.version, seconds

    def update_weights_url(self, url: str, version: int, checksum: str | None = None) -> float:
        return load_from_url(self._engine, url, version, checksum)

    def version(self) -> int:
        return self._engine.version

    def set_logprob_gap(self, gap: float) -> None:
        self._engine.metrics.logprob_gap.set(gap)

    def stats(self) -> dict[str, int]:
        return self._rollouts.stats()

    def stop(self) -> None:
        self._rollouts.stop()
        self._engine.close()
