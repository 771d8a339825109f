"""The learner session against a real Redis: consume, step, publish, checkpoint, ack, resume —
and a learner killed with SIGKILL that trains every scored group once, audited by group id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis
import yaml

from learner.batcher import has_signal
from learner.session import AUDIT_FILE, LearnerSession
from protocol.config import RunConfig
from protocol.queue import StreamProducer
from protocol.streams import LEARNER_GROUP, RunKeys
from protocol.transport import WeightVersion
from tests.learner.helpers import scored_groups


def _raw(redis_url: str, model: Path, out: Path, max_steps: int, name: str = "loop") -> dict:
    return {"run": {"name": name, "output_dir": str(out)},
            "redis": {"url": redis_url, "claim_idle_ms": 600_000},
            "learner": {"model_path": str(model), "token_budget": 100, "max_tokens_per_microbatch": 400,
                        "checkpoint_every": 2, "max_steps": max_steps, "http_port": 0, "lr": 1e-3,
                        "publish_dtype": "float32", "max_staleness": 1000}}


def _run(session: LearnerSession) -> None:
    t = threading.Thread(target=session.run, args=(threading.Event(),))
    t.start()
    t.join(300)
    assert not t.is_alive()
    session.close()


def test_session_consumes_trains_publishes_and_resumes(redis_url: str, redis_client: redis.Redis,
                                                       moe_path: Path, tmp_path: Path) -> None:
    keys = RunKeys("loop")
    groups = scored_groups(12, seed=11, max_len=30)
    StreamProducer(redis_client, keys.scored).produce(groups)
    session = LearnerSession(RunConfig.model_validate(_raw(redis_url, moe_path, tmp_path, 3)))
    base = session.server.base_url
    _run(session)

    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.learner_state).items()}
    assert state["version"] == "3" and state["max_staleness"] == "1000"
    latest = WeightVersion.from_redis(redis_client.hgetall(keys.weights))
    assert latest.version == 3 and latest.url.startswith(base)
    # every entry read made it into the final checkpoint, so none is left pending
    assert int(redis_client.xpending(keys.scored, LEARNER_GROUP)["pending"]) == 0
    c = session.learner.batcher.counters
    assert c.tokens_trained == 300 and session.learner.batcher.accounting_balances()
    ckpts = sorted(p.name for p in (tmp_path / "loop" / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-00000002", "step-00000003"]

    # a restarted learner resumes at version 3; a replayed entry is recognised and skipped
    StreamProducer(redis_client, keys.scored).produce(groups[:2])
    again = LearnerSession(RunConfig.model_validate(_raw(redis_url, moe_path, tmp_path, 7)))
    assert again.learner.version == 3
    more = scored_groups(6, seed=12, max_len=30, prefix="more")
    StreamProducer(redis_client, keys.scored).produce(more)
    _run(again)
    assert again.learner.version == 7  # past what the checkpoint buffered: it had to read
    assert again.learner.batcher.counters.groups_duplicate == 2
    assert again.learner.batcher.counters.groups_in == c.groups_in + 6


def test_weights_pull_while_running(redis_url: str, redis_client: redis.Redis, moe_path: Path,
                                    tmp_path: Path) -> None:
    session = LearnerSession(RunConfig.model_validate(_raw(redis_url, moe_path, tmp_path, 1)))
    session.publish()
    r = httpx.get(f"{session.server.base_url}/v1/weights/latest", timeout=10)
    assert r.status_code == 200 and r.json()["version"] == 0
    assert httpx.get(f"{session.server.base_url}/healthz", timeout=10).json()["ok"]
    session.close()


def _serve(cfg: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("ringrl")
    return subprocess.Popen([str(exe), "serve", "learner", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _spans(audit: Path) -> tuple[list[int], dict[tuple[str, int], list[tuple[int, int]]]]:
    versions, spans = [], {}
    for line in audit.read_text().splitlines():
        row = json.loads(line)
        versions.append(row["version"])
        for gid, idx, start, end in row["pieces"]:
            spans.setdefault((gid, idx), []).append((start, end))
    return versions, spans


def test_sigkilled_learner_trains_every_group_once(redis_url: str, redis_client: redis.Redis,
                                                   moe_path: Path, tmp_path: Path) -> None:
    keys = RunKeys("killed")
    groups = scored_groups(40, seed=5, max_len=30)
    trainable = {(g.group_id, i): len(r.token_ids) for g in groups if has_signal(np.array(g.rewards))
                 for i, r in enumerate(g.responses) if len(r.token_ids)}
    steps = sum(trainable.values()) // 100
    StreamProducer(redis_client, keys.scored).produce(groups)
    raw = _raw(redis_url, moe_path, tmp_path, steps, name="killed")
    raw["learner"]["read_batch"] = 3  # reads a little at a time, so the kill finds entries read but unacked
    cfg = tmp_path / "learner.yaml"
    cfg.write_text(yaml.safe_dump(raw))

    first = _serve(cfg)
    try:
        deadline = time.monotonic() + 300
        while True:  # past the checkpoint at 4, frozen at a moment when read entries wait unacked
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the learner made no progress"
            if int(redis_client.hget(keys.learner_state, "version") or 0) >= 5:
                # a checkpoint acks all it read: freezing right after one would leave nothing pending
                first.send_signal(signal.SIGSTOP)
                if int(redis_client.xpending(keys.scored, LEARNER_GROUP)["pending"]) > 0:
                    break
                first.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    # Entries read after the checkpoint at step 4 were not acked: they wait for the restart.
    assert int(redis_client.xpending(keys.scored, LEARNER_GROUP)["pending"]) > 0

    second = _serve(cfg)
    assert second.wait(300) == 0, second.stderr.read() if second.stderr else ""
    versions, spans = _spans(tmp_path / "killed" / "checkpoints" / AUDIT_FILE)
    assert versions == list(range(1, steps + 1))  # steps after the checkpoint were retrained, once each
    trained = 0
    for key, parts in spans.items():
        assert key in trainable, f"{key} was never produced"
        parts.sort()
        # a response is cut at the budget at most into contiguous, disjoint spans: never twice
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), f"{key} trained twice: {parts}"
        assert parts[0][0] == 0
        trained += parts[-1][1]
    assert trained == steps * 100
    untrained = sum(n for key, n in trainable.items() if key not in spans)
    leftover = sum(trainable[k] - spans[k][-1][1] for k in spans) + untrained
    assert leftover < 100  # everything else was trained: less than one budget stays buffered
    assert int(redis_client.xpending(keys.scored, LEARNER_GROUP)["pending"]) == 0
