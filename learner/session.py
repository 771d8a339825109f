"""One learner session: ingest → step → publish → checkpoint → ack, whichever driver runs it.

`ringrl serve learner` runs it free (`run`); the embedded Ray actor paces it step by step. Both get
the same ack policy, the same checkpoints, the same audit of what each step trained, and the same
`learner_state` hash — this is its only writer.

Ack policy (`learner.ack`):
- `checkpoint` (default): a scored entry is acknowledged once a checkpoint that holds it (trained,
  or buffered in the batcher state) is on disk. A learner killed at any moment restarts from its
  newest checkpoint; the entries read after it are still pending for this consumer and are read
  again first (`StreamConsumer.recover`); the ones the checkpoint already holds are dropped by group
  id. So no acknowledged group is lost and none is trained twice. Entries the learner holds but has
  not acknowledged do not count as backlog (`Backpressure` subtracts them), so the rollout's bound
  does not stall; the learner reads only when its batcher cannot fill a step, so what it holds is
  bounded by `checkpoint_every` steps of data.
- `ingest`: acknowledged as soon as they are in the batcher (a crash loses what was buffered
  since the last checkpoint; Redis keeps nothing the learner has read).

Audit: `<checkpoints>/steps.jsonl` has one line per optimiser step listing the response spans it
trained, and `groups.jsonl` one line per group read with its fate (duplicate, filtered, stale,
buffered) plus a marker per checkpoint; on restart the lines past the checkpoint are dropped, as
those steps and reads happen again. Together with the streams' contents they account for every
group by id (tests/deploy/test_services_multihost.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from learner.batcher import Step
from learner.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf,
)
from learner.distributed import NoPeers, Peers
from learner.publish import Publisher, WeightServer
from learner.trainer import Learner
from protocol.auth import load_tokens, warn_if_open
from protocol.config import RunConfig
from protocol.queue import Entry, StreamConsumer, queue_client, redis_probe
from protocol.streams import LEARNER_GROUP, Plan, RunKeys
from protocol.transport import WeightVersion
from protocol.transport.broadcast import BroadcastSender, create_group

AUDIT_FILE = "steps.jsonl"
GROUPS_FILE = "groups.jsonl"
"""One line per group read: its fate (duplicate, filtered, stale, buffered), and a marker per checkpoint."""
STEPS_KEPT = 100_000
"""Step rows kept on the run's steps stream (the driver's metrics.jsonl has them all)."""
log = logging.getLogger("ringrl.learner")


def checkpoint_root(cfg: RunConfig) -> Path:
    return Path(cfg.learner.checkpoint_dir or Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")


def start_learner(cfg: RunConfig, start_version: int = 0) -> Learner:
    """Resume from the newest checkpoint if there is one, else start from learner.model_path."""
    ckpt = latest_checkpoint(checkpoint_root(cfg))
    if ckpt is not None:
        return load_checkpoint(cfg.learner, ckpt)
    if not cfg.learner.model_path:
        raise ValueError("learner.model_path: empty and no checkpoint to resume from")
    learner = Learner(cfg.learner, cfg.learner.model_path)
    learner.version = start_version
    return learner


class LearnerSession:
    def __init__(self, cfg: RunConfig, consumer: str = "learner-0", start_version: int = 0,
                 weights_dir: str | Path | None = None, http_port: int | None = None,
                 peers: Peers | None = None) -> None:
        """`peers`: the other learner ranks (learner.ranks > 1), which this session, as rank 0, has
        run their part of every step, publish, checkpoint and save."""
        if not cfg.redis.url:
            raise ValueError("redis.url: the learner consumes the scored stream and needs Redis")
        lc = cfg.learner
        if lc.ranks > 1 and peers is None:
            raise ValueError(f"learner.ranks: {lc.ranks} needs the embedded driver, whose Ray actors host the "
                             "other ranks; a learner session on its own is one rank")
        self.cfg, self.keys = cfg, RunKeys(cfg.run.name)
        self.peers = peers or NoPeers()
        self.root = checkpoint_root(cfg)
        self.learner = start_learner(cfg, start_version)
        self._trim_audit()
        self.client = queue_client(cfg.redis)
        self._redis_up = redis_probe(self.client)
        # No XAUTOCLAIM: the learner is the group's one consumer, and what it holds unacked until its
        # next checkpoint is idle by design; reclaiming it would re-read it as duplicates every
        # second. A restarted learner gets its own pending entries back through recover().
        self.consumer = StreamConsumer(self.client, self.keys.scored, LEARNER_GROUP, consumer,
                                       claim_idle_ms=cfg.redis.claim_idle_ms, reclaim_every_s=float("inf"))
        self.registry = CollectorRegistry()
        self._step_gauge = Gauge("ringrl_learner_step", "Last step's metrics", ["name"], registry=self.registry)
        self._count_gauge = Gauge("ringrl_learner_counters", "Batcher counters (groups/tokens by fate)",
                                  ["name"], registry=self.registry)
        tokens = load_tokens(cfg.auth)
        warn_if_open(tokens, lc.http_host, "learner")
        self.server = WeightServer(weights_dir or self.root.parent / "weights", lc.http_host,
                                   lc.http_port if http_port is None else http_port, lc.keep_weight_versions,
                                   lc.public_url, self.registry, self.health, tokens)
        # The pull store serves every transport: it is how an engine that joins late catches up.
        self.publisher = Publisher([self.server.store], lc.publish_dtype, lc.bucket_mb << 20, self.client,
                                   cfg.run.name)
        self.last_metrics: dict[str, float] = {}
        self.plan: Plan | None = None
        self._unacked: list[bytes] = []
        self._recovered = False
        self._lags: list[int] = []
        self._rewards: list[float] = []
        # (prompt id, mean reward) of each group read, for a prompt feed that weighs prompts by
        # how much they still teach; bounded, so a run whose feed never reads them keeps the newest.
        self._outcomes: deque[tuple[str, float]] = deque(maxlen=100_000)
        self.groups_read = 0
        self._write_state()

    # ---- weights ------------------------------------------------------------------------
    def join_broadcast(self, world_size: int, port: int | None = None) -> None:
        """Host the weight-broadcast group (learner is rank 0) on `port` (default
        `learner.broadcast_port`); blocks until every engine joined. A group hosted before is
        dropped: this is how the group is re-formed after an engine was replaced."""
        lc = self.cfg.learner
        if lc.weight_transport != "broadcast":
            raise ValueError(f"learner.weight_transport: {lc.weight_transport} has no group to host")
        if world_size < 2:
            raise ValueError(f"learner.broadcast_world_size: {world_size}; the broadcast group holds the "
                             "learner and at least one engine (>= 2)")
        self.publisher.senders = [s for s in self.publisher.senders if not isinstance(s, BroadcastSender)]
        group = create_group(lc.broadcast_host, port or lc.broadcast_port, 0, world_size, lc.broadcast_backend)
        self.publisher.senders.append(BroadcastSender(group))

    def publish(self) -> WeightVersion:
        """Store (pull), broadcast (if the group is hosted) and announce the current weights."""
        with self.peers.mirror("publish"):
            return self.publisher.publish(self.learner.model, self.learner.version)

    # ---- data ---------------------------------------------------------------------------
    def ingest(self, block_ms: int = 200) -> int:
        """Move waiting scored groups into the batcher; returns how many entries were read."""
        entries: list[Entry] = []
        if not self._recovered:  # what a killed predecessor read but never acked comes first
            entries = self.consumer.recover(self.cfg.learner.read_batch)
            self._recovered = not entries
        entries = entries or self.consumer.read(count=self.cfg.learner.read_batch, block_ms=block_ms)
        self._take(entries)
        return len(entries)

    def _take(self, entries: list[Entry]) -> None:
        self._lags += [self.learner.version - e.group.policy_version for e in entries]
        self._rewards += [float(r) for e in entries for r in e.group.rewards]
        self._outcomes.extend((e.group.prompt_id, float(sum(e.group.rewards)) / len(e.group.rewards))
                              for e in entries if e.group.responses)
        fates = self.learner.add_groups([e.group for e in entries], self.plan.stage if self.plan else None)
        self._audit_lines(GROUPS_FILE, [{"group_id": e.group.group_id, "fate": f, "version": self.learner.version}
                                        for e, f in zip(entries, fates)])
        ids = [e.id for e in entries]
        if self.cfg.learner.ack == "ingest":
            self.consumer.ack(ids)
        else:
            self._unacked += ids
        self.groups_read += len(entries)

    def ready(self) -> bool:
        return self.learner.batcher.ready(self.learner.version)

    # ---- steps --------------------------------------------------------------------------
    def step(self, timeout_s: float | None = None, stop: Callable[[], bool] | None = None) -> dict[str, Any] | None:
        """Read until one step's token budget is buffered, train it, checkpoint on schedule.

        None when `timeout_s` passed or `stop()` turned true before the budget was there.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waited = time.monotonic()
        while not self.ready():
            if (deadline is not None and time.monotonic() > deadline) or (stop is not None and stop()):
                return None
            self.ingest()
        wait_s = time.monotonic() - waited
        step = self.learner.batcher.next_step(self.learner.version)
        assert step is not None  # ready() said so
        with self.peers.mirror("train_step", step):
            metrics = self.learner.train_step(step)
        self._audit(step)
        lc = self.cfg.learner
        if lc.checkpoint_every and self.learner.version % lc.checkpoint_every == 0:
            self.checkpoint()
        lags, self._lags = self._lags, []
        rewards, self._rewards = self._rewards, []
        out = {**metrics, "version": self.learner.version, "data_wait_s": wait_s,
               "staleness_max": max(lags, default=0),
               "staleness_mean": sum(lags) / len(lags) if lags else 0.0,
               "reward": sum(rewards) / len(rewards) if rewards else float("nan"),
               "groups_ingested": len(lags),
               **{f"count_{k}": v for k, v in self.learner.counters().items()}}
        self.last_metrics = metrics
        for k, val in metrics.items():
            self._step_gauge.labels(k).set(val)
        self._write_state()
        return out

    def read_plan(self) -> Plan | None:
        """The services-mode driver's plan (stage, last step, budget, lr), applied if it changed."""
        raw = self.client.hgetall(self.keys.plan)
        plan = Plan.from_redis(raw) if raw else None
        if plan is not None and plan != self.plan:
            if self.plan is not None and plan.stage != self.plan.stage:  # the last stage's carry
                self.learner.batcher.drop_stale(self.learner.version, everything=True)
            with self.peers.mirror("set_stage", plan.token_budget, plan.lr):
                self.learner.set_stage(plan.token_budget, plan.lr)
            log.info("plan: stage %s until step %d (budget %d, lr %g)", plan.stage, plan.until_step,
                     plan.token_budget, plan.lr)
        self.plan = plan
        return plan

    def _may_step(self) -> bool:
        plan = self.read_plan()
        return plan is None or self.learner.version < plan.until_step

    def run(self, stop_event: threading.Event) -> None:
        """Free-running: train and publish until learner.max_steps or `stop_event`; under a driver's
        plan, only up to its stage's last step (then wait for the next stage)."""
        lc, learner = self.cfg.learner, self.learner
        self.publish()  # engines joining now pull this
        while not stop_event.is_set() and not (lc.max_steps and learner.version >= lc.max_steps):
            if not self._may_step():
                stop_event.wait(0.5)
                continue
            out = self.step(stop=lambda: stop_event.is_set() or not self._may_step())
            if out is None:
                continue
            self._report(out)
            if learner.version % lc.publish_every == 0:
                self.publish()
        if lc.checkpoint_every or lc.ack == "checkpoint":
            self.checkpoint()

    def _report(self, out: dict[str, Any]) -> None:
        """One log line per step, and the step's metrics on the run's steps stream for the driver."""
        row = {**out, "stage": self.plan.stage if self.plan else ""}
        self.client.xadd(self.keys.steps, {b"m": json.dumps(row)}, maxlen=STEPS_KEPT, approximate=True)
        log.info("step %d: loss %.4f reward %.3f tokens %d stale<=%d wait %.1fs train %.1fs",
                 out["version"], out.get("loss", float("nan")), out["reward"], int(out.get("tokens", 0)),
                 out["staleness_max"], out["data_wait_s"], out.get("step_time_s", 0.0))

    # ---- durability ---------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Full resumable checkpoint, then acknowledge every entry it holds."""
        # The marker goes first: a crash before the save resumes an older checkpoint, whose own
        # marker is what the trim keeps up to.
        self._audit_lines(GROUPS_FILE, [{"checkpoint": self.learner.version}])
        with self.peers.mirror("checkpoint"):
            path = save_checkpoint(self.learner, self.root, keep=self.cfg.learner.keep_checkpoints)
        self.consumer.ack(self._unacked)
        self._unacked = []
        return path

    def save(self, out_dir: str | Path) -> str:
        """Weights + tokenizer (Hugging Face format), for the next stage or for eval."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with self.peers.mirror("save", str(out)):
            save_hf(self.learner, out)
        return str(out)

    def _audit(self, step: Step) -> None:
        self._audit_lines(AUDIT_FILE, [{"version": self.learner.version,
                                        "pieces": [[p.group_id, p.index, p.start, p.end] for p in step.pieces]}])

    def _audit_lines(self, name: str, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / name).open("a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))

    def _trim_audit(self) -> None:
        """Drop what happened after the checkpoint this session resumed from: it happens again."""
        path = self.root / AUDIT_FILE
        if path.is_file():
            keep = [ln for ln in path.read_text().splitlines()
                    if ln and json.loads(ln)["version"] <= self.learner.version]
            path.write_text("".join(ln + "\n" for ln in keep))
        path = self.root / GROUPS_FILE
        if path.is_file():  # up to the marker the resumed checkpoint wrote (none: nothing is kept)
            lines = path.read_text().splitlines()
            marks = [i for i, ln in enumerate(lines) if json.loads(ln).get("checkpoint") == self.learner.version]
            keep = lines[:marks[-1] + 1] if marks else []
            path.write_text("".join(ln + "\n" for ln in keep))

    def counters(self) -> dict[str, int]:
        return {**self.learner.counters(), "groups_read": self.groups_read}

    def take_outcomes(self) -> list[tuple[str, float]]:
        """The (prompt id, mean reward) of the groups read since the last call (any thread)."""
        out = []
        while self._outcomes:
            out.append(self._outcomes.popleft())
        return out

    def _write_state(self) -> None:
        """The learner's progress for the parts that pace themselves on it (rollout's staleness gate)."""
        counters = self.learner.counters()
        state: dict[str, Any] = {"version": self.learner.version, "max_staleness": self.cfg.learner.max_staleness,
                                 "updated_at": time.time(), **counters}
        self.client.hset(self.keys.learner_state, mapping={k: str(v) for k, v in state.items()})
        for k, val in counters.items():
            self._count_gauge.labels(k).set(val)

    def health(self) -> dict[str, Any]:
        """Alive while the process serves; ready while Redis answers (else it trains nothing)."""
        return {"ok": True, "ready": self._redis_up(), "version": self.learner.version,
                "plan": self.plan.stage if self.plan else None}

    def close(self) -> None:
        self.server.close()
