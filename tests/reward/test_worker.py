"""Reward workers on a real Redis: raw groups in, scored groups out, exactly once."""

from __future__ import annotations

import multiprocessing as mp
import time

import redis

from protocol.codec import decode_group
from protocol.config import RunConfig
from protocol.config.redis import RedisConfig
from protocol.queue import FIELD, StreamProducer
from protocol.schema import CodeReference, IOTest, MathReference, TaskKind
from protocol.streams import LEARNER_GROUP, RunKeys
from reward_service.worker import main as worker_main
from tests.protocol.strategies import make_group
from tests.reward.conftest import reward_config

RUN = "reward-test"


def _groups(n: int) -> list:
    out = []
    for i in range(n):
        g = make_group(n=3, seed=i, group_id=f"g{i}")
        if i % 2:  # code group: one correct program, one wrong, one without a code block
            g.task = TaskKind.code
            g.reference = CodeReference(io_tests=[IOTest(stdin=f"{i}\n", stdout=str(i + 1))])
            texts = ["```python\nprint(int(input()) + 1)\n```", "```python\nprint(0)\n```", "hmm"]
        else:
            g.reference = MathReference(answer=str(i))
            texts = [f"\\boxed{{{i}}}", f"\\boxed{{{i + 1}}}", "no box"]
        for r, t in zip(g.responses, texts):
            r.text = t
        out.append(g)
    return out


def test_two_worker_processes_score_every_group_exactly_once(redis_url: str,
                                                             redis_client: redis.Redis) -> None:
    keys = RunKeys(RUN)
    groups = _groups(12)
    StreamProducer(redis_client, keys.rollouts).produce(groups)
    cfg = RunConfig(redis=RedisConfig(url=redis_url), reward=reward_config())
    cfg.run.name = RUN
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(cfg.model_dump_json(), i)) for i in range(2)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 120
        while redis_client.xlen(keys.scored) < len(groups) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # any duplicate would land now
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    scored = [decode_group(f[FIELD]) for _, f in redis_client.xrange(keys.scored)]
    assert sorted(g.group_id for g in scored) == sorted(g.group_id for g in groups)
    for g in scored:
        assert g.scored_at is not None
        assert [r.reward for r in g.responses] == [1.0, 0.0, 0.0], g.group_id
        assert g.responses[2].verdict.status.value == "no_answer"
    assert redis_client.xlen(keys.rollouts) == 0  # every raw group acked and removed


def test_groups_the_learner_holds_do_not_stop_scoring(redis_url: str, redis_client: redis.Redis) -> None:
    """The learner acks after a checkpoint; until then its entries sit in `scored`. A worker that
    counted them against the backlog bound would wait for a checkpoint that waits for it."""
    keys = RunKeys(RUN)
    held = _groups(4)
    StreamProducer(redis_client, keys.scored).produce(held)
    redis_client.xgroup_create(keys.scored, LEARNER_GROUP, id="0")
    redis_client.xreadgroup(LEARNER_GROUP, "learner-0", {keys.scored: ">"}, count=len(held))
    StreamProducer(redis_client, keys.rollouts).produce(_groups(6)[4:])
    cfg = RunConfig(redis=RedisConfig(url=redis_url, max_backlog=len(held)), reward=reward_config())
    cfg.run.name = RUN
    proc = mp.get_context("spawn").Process(target=worker_main, args=(cfg.model_dump_json(), 0))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while redis_client.xlen(keys.scored) < len(held) + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        # read while the worker runs: on stop it forwards what it holds whatever the bound
        scored, left = redis_client.xlen(keys.scored), redis_client.xlen(keys.rollouts)
    finally:
        proc.terminate()
        proc.join(30)
    assert (scored, left) == (len(held) + 2, 0), "the worker stopped at the learner's held entries"
