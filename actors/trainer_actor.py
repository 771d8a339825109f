"""The learner session as a Ray actor: the driver paces it one step at a time (progress, per-step
lines, sync mode, stage ends); everything it does is a call into learner/session.py."""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.learner_rank import LearnerRanks
from learner.session import LearnerSession
from protocol.config import RunConfig
from protocol.transport import WeightVersion


@ray.remote(max_concurrency=2)
class TrainerActor:
    def __init__(self, config_json: str, start_version: int, weights_dir: str) -> None:
        cfg = RunConfig.model_validate_json(config_json)
        # learner.ranks > 1: this actor is rank 0 and drives the other ranks' actors
        self.ranks = LearnerRanks(cfg, start_version)
        self.session = LearnerSession(cfg, "trainer", start_version, weights_dir, http_port=0, peers=self.ranks)
        self.ranks.wait_ready()

    def join_broadcast(self, world_size: int) -> None:
        self.session.join_broadcast(world_size)

    def ingest(self, block_ms: int = 200) -> int:
        return self.session.ingest(block_ms)

    def ready(self) -> bool:
        return self.session.ready()

    def step(self, timeout_s: float = 600.0) -> dict[str, Any] | None:
        return self.session.step(timeout_s)

    def publish(self) -> tuple[WeightVersion, float]:
        """The published record (its URL is what an http receiver pulls) and the seconds it took."""
        t = time.monotonic()
        record = self.session.publish()
        return record, time.monotonic() - t

    def version(self) -> int:
        return self.session.learner.version

    def counters(self) -> dict[str, int]:
        return self.session.counters()

    def outcomes(self) -> list[tuple[str, float]]:
        return self.session.take_outcomes()

    def save(self, out_dir: str) -> str:
        return self.session.save(out_dir)

    def checkpoint(self) -> str:
        return str(self.session.checkpoint())

    def rank_pids(self) -> list[int]:
        """Process ids of learner ranks 1..K-1 (empty with one rank)."""
        return self.ranks.pids()

    def close(self) -> None:
        self.session.close()
        self.ranks.close()
