"""Ray actor hosting one reward worker loop (embedded mode)."""

from __future__ import annotations

import threading

import ray

from protocol.config import RunConfig
from reward_service.scorer import Scorer
from reward_service.worker import RewardWorker


@ray.remote(max_concurrency=4)  # run() holds one thread; stop()/stats() need others
class RewardActor:
    def __init__(self, config_json: str, index: int) -> None:
        cfg = RunConfig.model_validate_json(config_json)
        self._scorer = Scorer(cfg.reward)
        self._worker = RewardWorker(self._scorer, cfg.redis, cfg.run.name, f"reward-actor-{index}")
        self._done = threading.Event()

    def run(self) -> dict[str, int]:
        """Blocks until stop(); returns the final stats."""
        try:
            self._worker.run()
        finally:
            self._scorer.close()
            self._done.set()
        return self._worker.stats()

    def stop(self) -> None:
        self._worker.stop()

    def stats(self) -> dict[str, int]:
        return self._worker.stats()
