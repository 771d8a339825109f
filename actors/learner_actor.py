"""Ray actor hosting the learner loop (embedded mode)."""

from __future__ import annotations

from typing import Any

import ray

from learner.loop import LearnerLoop
from protocol.config import RunConfig


@ray.remote(max_concurrency=4)  # run() holds one thread; stop()/stats() need others
class LearnerActor:
    def __init__(self, config_json: str, consumer: str = "learner-0") -> None:
        self._loop = LearnerLoop(RunConfig.model_validate_json(config_json), consumer)

    def weights_url(self) -> str:
        return self._loop.server.base_url

    def run(self) -> dict[str, Any]:
        """Blocks until stop() or learner.max_steps; returns the final stats."""
        self._loop.run()
        return self._loop.stats()

    def stop(self) -> None:
        self._loop.stop()

    def stats(self) -> dict[str, Any]:
        return self._loop.stats()
