"""The learner as the driver sees it: one C3PO step per call, then a weight publication.

`learner/loop.py` is the free-running services loop; a training run instead wants the driver to
pace steps (progress, per-step lines, sync mode, stage ends), so this actor exposes the learner
one step at a time. Data comes from the scored stream and is acked once in the batcher.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from learner.checkpoint import save_checkpoint
from learner.publish import Publisher, WeightServer
from learner.trainer import Learner
from protocol import weight_transfer as wt
from protocol.config import RunConfig
from protocol.queue import StreamConsumer, connect
from protocol.streams import LEARNER_GROUP, RunKeys


@ray.remote(max_concurrency=2)
class TrainerActor:
    def __init__(self, config_json: str, model_path: str, start_version: int, weights_dir: str,
                 broadcast_world_size: int) -> None:
        cfg = RunConfig.model_validate_json(config_json)
        lc = cfg.learner
        self.cfg, self.keys = cfg, RunKeys(cfg.run.name)
        self.learner = Learner(lc, model_path)
        self.learner.version = start_version
        self.client = connect(cfg.redis.url or "")
        self.consumer = StreamConsumer(self.client, self.keys.scored, LEARNER_GROUP, "trainer",
                                       claim_idle_ms=cfg.redis.claim_idle_ms)
        self.server = WeightServer(weights_dir, lc.http_host, 0, lc.keep_weight_versions)
        self._group_args = (lc.broadcast_host, lc.broadcast_port, broadcast_world_size, lc.broadcast_backend)
        self.publisher: Publisher | None = None
        self._lags: list[int] = []
        self._rewards: list[float] = []
        self._groups_read = 0

    def join_broadcast(self) -> None:
        """Host the weight group; blocks until every engine has joined (call alongside them)."""
        host, port, world, backend = self._group_args
        group = wt.create_group(host, port, 0, world, backend) if world > 1 else None
        self.publisher = Publisher(self.server, self.cfg.learner.publish_dtype,
                                   self.cfg.learner.bucket_mb << 20, group, self.client, self.cfg.run.name)

    def ingest(self, block_ms: int = 200) -> int:
        """Move whatever scored groups are waiting into the batcher; returns how many."""
        entries = self.consumer.read(count=self.cfg.learner.read_batch, block_ms=block_ms)
        self._lags += [self.learner.version - e.group.policy_version for e in entries]
        self._rewards += [float(r) for e in entries for r in e.group.rewards]
        self.learner.add_groups(e.group for e in entries)
        # Acked once in the batcher: filtered and stale groups must leave the stream, or they
        # would hold the backlog bound shut. What is buffered lives in this process until the
        # next step, and in the emergency checkpoint on Ctrl-C (batcher state included).
        self.consumer.ack([e.id for e in entries])
        self._groups_read += len(entries)
        return len(entries)

    def ready(self) -> bool:
        return self.learner.batcher.ready(self.learner.version)

    def step(self, timeout_s: float = 600.0) -> dict[str, Any] | None:
        """Read until one step's token budget is buffered, then train it."""
        deadline = time.monotonic() + timeout_s
        waited = time.monotonic()
        while not self.ready():
            if time.monotonic() > deadline:
                return None
            self.ingest()
        wait_s = time.monotonic() - waited
        metrics = self.learner.train_ready(max_steps=1)[0]
        lags, self._lags = self._lags, []
        rewards, self._rewards = self._rewards, []
        self.client.hset(self.keys.learner_state, mapping={"version": self.learner.version})
        return {**metrics, "version": self.learner.version, "data_wait_s": wait_s,
                "staleness_max": max(lags, default=0),
                "staleness_mean": sum(lags) / len(lags) if lags else 0.0,
                "reward": sum(rewards) / len(rewards) if rewards else float("nan"),
                "groups_ingested": len(lags),
                **{f"count_{k}": v for k, v in self.learner.counters().items()}}

    def publish(self) -> dict[str, Any]:
        """Store, broadcast and announce the current weights as version `learner.version`."""
        assert self.publisher is not None, "join_broadcast() first"
        t = time.monotonic()
        record = self.publisher.publish(self.learner.model, self.learner.version)
        return {**record.model_dump(), "publish_s": time.monotonic() - t}

    def version(self) -> int:
        return self.learner.version

    def counters(self) -> dict[str, int]:
        return {**self.learner.counters(), "groups_read": self._groups_read}

    def save(self, out_dir: str) -> str:
        """Save weights + tokenizer (Hugging Face format) for the next stage or for eval."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.learner.model.save_pretrained(out, safe_serialization=True)
        self.learner.tokenizer.save_pretrained(out)
        return str(out)

    def checkpoint(self, root: str) -> str:
        """Full resumable checkpoint (optimizer, scheduler, RNG, batcher state)."""
        return str(save_checkpoint(self.learner, root, keep=self.cfg.learner.keep_checkpoints))

    def close(self) -> None:
        self.server.close()
