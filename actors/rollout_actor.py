"""Ray actor hosting one rollout engine and its streaming loop (embedded mode). Thin on purpose:
everything it does is a call into rollout_service."""

from __future__ import annotations

import ray
import ray.util

from protocol.config import RunConfig
from protocol.queue import queue_client
from protocol.transport import WeightReceiver, WeightVersion
from protocol.transport.broadcast import BroadcastReceiver
from protocol.transport.http_pull import HttpReceiver
from rollout_service.engine import Engine, Sampling
from rollout_service.streaming import Prompt, Rollouts
from rollout_service.weights import load_version


@ray.remote(max_concurrency=4)  # a weight update blocks one thread; submit/version need others
class RolloutActor:
    def __init__(self, config_json: str, model: str | None = None, version: int = 0) -> None:
        cfg = RunConfig.model_validate_json(config_json)
        if not cfg.redis.url:
            raise ValueError("redis.url: the rollout actor streams into Redis; start one first")
        self._engine = Engine(model or cfg.rollout.model, cfg.rollout, version=version)
        self._rollouts = Rollouts(self._engine, queue_client(cfg.redis), cfg.run.name, cfg.rollout,
                                  cfg.redis.max_backlog, audit=cfg.redis.audit)
        self._receiver: WeightReceiver = (BroadcastReceiver() if cfg.learner.weight_transport == "broadcast"
                                          else HttpReceiver())
        self._backend = cfg.learner.broadcast_backend

    def submit(self, prompts: list[dict]) -> list[str]:
        """Queue prompts (Prompt fields as dicts), blocking while the loop is full; group ids."""
        return [self._rollouts.submit(Prompt.model_validate(p), block=True) for p in prompts]

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._rollouts.wait_idle(timeout)

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the learner's broadcast group (weight_transport: broadcast only)."""
        if not isinstance(self._receiver, BroadcastReceiver):
            raise ValueError("learner.weight_transport: http has no group to join")
        self._receiver.join(host, port, rank, world_size, self._backend)

    def update_weights(self, record: WeightVersion) -> tuple[int, float]:
        """Receive and load the version `record` names (broadcast: the one the learner is sending
        now; http: pulled from record.url), buffered; returns (version, load seconds)."""
        return load_version(self._engine, self._receiver, record)

    def pull_weights(self, record: WeightVersion) -> tuple[int, float]:
        """Load `record` from the learner's store over HTTP whatever the transport: how a restarted
        engine catches up before it rejoins the broadcast group."""
        return load_version(self._engine, HttpReceiver(), record)

    def measure(self, prompts: list[str], max_tokens: int, samples: int,
                seed: int) -> tuple[int, list[str], list[list[str]]]:
        """At the engine's current weights: (version, one greedy text per prompt, `samples` texts per
        prompt at T=1 seeded by `seed`)."""
        greedy = [self._engine.submit(self._engine.encode(p), 1, Sampling(temperature=0.0, max_tokens=max_tokens))
                  for p in prompts]
        sampled = [self._engine.submit(self._engine.encode(p), samples,
                                       Sampling(temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=seed))
                   for p in prompts] if samples else []
        return (self._engine.version, [f.result()[0].text for f in greedy],
                [[r.text for r in f.result()] for f in sampled])

    def version(self) -> int:
        return self._engine.version

    def node(self) -> str:
        """The address of the node Ray placed this engine on."""
        return ray.util.get_node_ip_address()

    def set_logprob_gap(self, gap: float) -> None:
        self._engine.metrics.logprob_gap.set(gap)

    def stats(self) -> dict[str, int]:
        return self._rollouts.stats()

    def stop(self) -> None:
        self._rollouts.stop()
        self._engine.close()
