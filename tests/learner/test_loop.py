"""The learner loop against a real Redis: consume, step, publish, checkpoint, ack, resume."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import redis

from learner.loop import LearnerLoop
from protocol.config import RunConfig
from protocol.queue import StreamProducer
from protocol.streams import LEARNER_GROUP, RunKeys
from protocol.weights import WeightVersion
from tests.learner.helpers import scored_groups


def _cfg(redis_url: str, model: Path, out: Path, max_steps: int) -> RunConfig:
    return RunConfig.model_validate({
        "run": {"name": "loop", "output_dir": str(out)},
        "redis": {"url": redis_url},
        "learner": {"model_path": str(model), "token_budget": 100, "max_tokens_per_microbatch": 400,
                    "checkpoint_every": 2, "max_steps": max_steps, "http_port": 0, "lr": 1e-3,
                    "publish_dtype": "float32"}})


def _run(loop: LearnerLoop) -> None:
    t = threading.Thread(target=loop.run)
    t.start()
    t.join(300)
    assert not t.is_alive()


def test_loop_consumes_trains_publishes_and_resumes(redis_url: str, redis_client: redis.Redis,
                                                    moe_path: Path, tmp_path: Path) -> None:
    keys = RunKeys("loop")
    groups = scored_groups(12, seed=11, max_len=30)
    StreamProducer(redis_client, keys.scored).produce(groups)
    loop = LearnerLoop(_cfg(redis_url, moe_path, tmp_path, max_steps=3))
    base = loop.server.base_url
    _run(loop)

    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.learner_state).items()}
    assert state["version"] == "3"
    latest = WeightVersion.from_redis(redis_client.hgetall(keys.weights))
    assert latest.version == 3 and latest.url.startswith(base)
    # every entry read made it into the final checkpoint, so none is left pending
    assert int(redis_client.xpending(keys.scored, LEARNER_GROUP)["pending"]) == 0
    c = loop.learner.batcher.counters
    assert c.tokens_trained == 300 and loop.learner.batcher.accounting_balances()
    ckpts = sorted(p.name for p in (tmp_path / "loop" / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000003"]

    # a restarted learner resumes at version 3; a replayed entry is recognised and skipped
    StreamProducer(redis_client, keys.scored).produce(groups[:2])
    again = LearnerLoop(_cfg(redis_url, moe_path, tmp_path, max_steps=4))
    assert again.learner.version == 3
    more = scored_groups(6, seed=12, max_len=30, prefix="more")
    StreamProducer(redis_client, keys.scored).produce(more)
    _run(again)
    assert again.learner.version == 4
    assert again.learner.batcher.counters.groups_duplicate == 2
    assert again.learner.batcher.counters.groups_in == c.groups_in + 6


def test_weights_pull_while_running(redis_url: str, redis_client: redis.Redis, moe_path: Path,
                                    tmp_path: Path) -> None:
    loop = LearnerLoop(_cfg(redis_url, moe_path, tmp_path, max_steps=1))
    loop.publisher.publish(loop.learner.model, 0)
    r = httpx.get(f"{loop.server.base_url}/v1/weights/latest", timeout=10)
    assert r.status_code == 200 and r.json()["version"] == 0
    assert httpx.get(f"{loop.server.base_url}/healthz", timeout=10).json()["ok"]
    loop.server.close()
