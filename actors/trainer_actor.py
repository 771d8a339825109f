"""The learner session as a Ray actor: the driver paces it one step at a time (progress, per-step
lines, sync mode, stage ends); everything it does is a call into learner/session.py."""

from __future__ import annotations

import time
from typing import Any

import ray
import ray.util

from actors.learner_rank import LearnerRanks
from learner.session import LearnerSession
from protocol.config import RunConfig
from protocol.netaddr import free_port
from protocol.transport import WeightVersion


@ray.remote(max_concurrency=2)
class TrainerActor:
    def __init__(self, config_json: str, start_version: int, weights_dir: str, advertise: bool = False) -> None:
        cfg = RunConfig.model_validate_json(config_json)
        # The learner's servers listen where the engines reach them: its own node's address on a
        # cluster (known only here, once placed), loopback on a local Ray.
        host = ray.util.get_node_ip_address() if advertise else "127.0.0.1"
        learner = cfg.learner.model_copy(update={"http_host": host, "broadcast_host": host,
                                                 "broadcast_port": free_port(host), "public_url": ""})
        # learner.ranks > 1: this actor is rank 0 and drives the other ranks' actors
        self.ranks = LearnerRanks(cfg, start_version)
        self.session = LearnerSession(cfg.model_copy(update={"learner": learner}), "trainer", start_version,
                                      weights_dir, http_port=0, peers=self.ranks)
        self.ranks.wait_ready()

    def endpoint(self) -> tuple[str, str, int]:
        """(host, weight server URL, broadcast rendezvous port) the engines are to use."""
        lc = self.session.cfg.learner
        return lc.broadcast_host, self.session.server.base_url, lc.broadcast_port

    def join_broadcast(self, world_size: int, port: int | None = None) -> None:
        self.session.join_broadcast(world_size, port)

    def fresh_port(self) -> int:
        """A free port on the learner's broadcast host, to re-form the weight group on."""
        return free_port(self.session.cfg.learner.broadcast_host)

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
