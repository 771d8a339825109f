"""The learner as a stream consumer: read scored groups, step, publish, checkpoint, ack.

Ack discipline (see learner/checkpoint.py for the exactly-once story): entries are acked only
once a checkpoint holding them is on disk; with checkpoint_every=0 they are acked right after
the step that follows their ingestion is applied (at-most-once for data buffered in memory).
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from learner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from learner.publish import Publisher, WeightServer
from learner.trainer import Learner
from protocol import weight_transfer as wt
from protocol.config import RunConfig
from protocol.queue import StreamConsumer, connect
from protocol.streams import LEARNER_GROUP, RunKeys


def checkpoint_root(cfg: RunConfig) -> Path:
    return Path(cfg.learner.checkpoint_dir or Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")


def start_learner(cfg: RunConfig) -> Learner:
    """Resume from the newest checkpoint if there is one, else start from learner.model_path."""
    ckpt = latest_checkpoint(checkpoint_root(cfg))
    if ckpt is not None:
        return load_checkpoint(cfg.learner, ckpt)
    if not cfg.learner.model_path:
        raise ValueError("learner.model_path: empty and no checkpoint to resume from")
    return Learner(cfg.learner, cfg.learner.model_path)


class LearnerLoop:
    def __init__(self, cfg: RunConfig, consumer: str = "learner-0") -> None:
        if not cfg.redis.url:
            raise ValueError("redis.url: the learner loop consumes the scored stream and needs Redis")
        lc = cfg.learner
        self.cfg, self.keys = cfg, RunKeys(cfg.run.name)
        self.stop_event = threading.Event()
        self.learner = start_learner(cfg)
        self.client = connect(cfg.redis.url)
        self.consumer = StreamConsumer(self.client, self.keys.scored, LEARNER_GROUP, consumer,
                                       claim_idle_ms=cfg.redis.claim_idle_ms)
        self.registry = CollectorRegistry()
        self._step_gauge = Gauge("ringrl_learner_step", "Last step's metrics", ["name"], registry=self.registry)
        self._tokens_gauge = Gauge("ringrl_learner_counters", "Batcher counters (groups/tokens by fate)",
                                   ["name"], registry=self.registry)
        self.last_metrics: dict[str, float] = {}
        self.server = WeightServer(checkpoint_root(cfg).parent / "weights", lc.http_host, lc.http_port,
                                   lc.keep_weight_versions, lc.public_url, self.registry,
                                   lambda: {"ok": True, "version": self.learner.version})
        group = (wt.create_group(lc.broadcast_host, lc.broadcast_port, 0, lc.broadcast_world_size,
                                 lc.broadcast_backend) if lc.broadcast_world_size > 1 else None)
        self.publisher = Publisher(self.server, lc.publish_dtype, lc.bucket_mb << 20, group, self.client,
                                   cfg.run.name)
        self._unacked: list[bytes] = []

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        lc, learner = self.cfg.learner, self.learner
        self.publisher.publish(learner.model, learner.version)  # engines joining now pull this
        self._write_state()
        while not self.stop_event.is_set() and not (lc.max_steps and learner.version >= lc.max_steps):
            entries = self.consumer.read(count=lc.read_batch, block_ms=500)
            learner.add_groups(e.group for e in entries)
            self._unacked += [e.id for e in entries]
            for metrics in learner.train_ready(max_steps=1):
                self._after_step(metrics)
        if lc.checkpoint_every:
            self._checkpoint()
        self.server.close()

    def _after_step(self, metrics: dict[str, float]) -> None:
        lc, v = self.cfg.learner, self.learner.version
        self.last_metrics = metrics
        if v % lc.publish_every == 0:
            self.publisher.publish(self.learner.model, v)
        if not lc.checkpoint_every:
            self._ack()
        elif v % lc.checkpoint_every == 0:
            self._checkpoint()
        for k, val in metrics.items():
            self._step_gauge.labels(k).set(val)
        for k, val in self.learner.counters().items():
            self._tokens_gauge.labels(k).set(val)
        self._write_state()

    def _checkpoint(self) -> None:
        save_checkpoint(self.learner, checkpoint_root(self.cfg), keep=self.cfg.learner.keep_checkpoints)
        self._ack()

    def _ack(self) -> None:
        self.consumer.ack(self._unacked)
        self._unacked = []

    def _write_state(self) -> None:
        state: dict[str, Any] = {"version": self.learner.version, "step": self.learner.batcher.counters.steps,
                                 **self.learner.counters()}
        self.client.hset(self.keys.learner_state, mapping={k: str(v) for k, v in state.items()})

    def stats(self) -> dict[str, Any]:
        return {"version": self.learner.version, **asdict(self.learner.batcher.counters),
                "metrics": self.last_metrics}
