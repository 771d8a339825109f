"""Groups reach the rollouts stream with the right shapes and versions; backpressure holds."""

from __future__ import annotations

import time

import pytest
import redis

from protocol.codec import decode_group
from protocol.queue import FIELD
from protocol.schema import MathReference, TaskKind
from protocol.streams import LEARNER_GROUP, RunKeys
from rollout_service.engine import Engine, InvalidRequest, Sampling
from rollout_service.streaming import Prompt, Rollouts
from tests.rollout.conftest import RUN



def read_groups(client: redis.Redis, want: int, timeout: float = 120.0) -> list:
    end = time.monotonic() + timeout
    while client.xlen(RunKeys(RUN).rollouts) < want and time.monotonic() < end:
        time.sleep(0.02)
    return [decode_group(f[FIELD]) for _, f in client.xrange(RunKeys(RUN).rollouts)]


def math(text: str | None = None, ids: list[int] | None = None, **kw: object) -> Prompt:
    return Prompt(task=TaskKind.math, reference=MathReference(answer="5"), prompt=text,
                  prompt_token_ids=ids, **kw)  # type: ignore[arg-type]


def test_groups_arrive_with_shapes_and_versions(rollouts: Rollouts, engine: Engine,
                                                redis_client: redis.Redis) -> None:
    ids = engine.encode("What is 3 + 4 - 2?")
    gids = [rollouts.submit(math("What is 3 + 4 - 2?", prompt_id="p0")),
            rollouts.submit(math(ids=ids, prompt_id="p1", n=2, sampling=Sampling(max_tokens=5)))]
    assert rollouts.wait_idle(120)
    groups = {g.group_id: g for g in read_groups(redis_client, 2)}
    assert set(groups) == set(gids)
    a, b = groups[gids[0]], groups[gids[1]]
    assert (a.prompt_id, len(a.responses), a.prompt_text) == ("p0", 4, "What is 3 + 4 - 2?")
    assert a.prompt_token_ids.tolist() == ids == b.prompt_token_ids.tolist()
    assert len(b.responses) == 2
    for g in (a, b):
        assert g.task == TaskKind.math and g.finished_at is not None
        for r in g.responses:
            assert r.policy_version == engine.version
            assert len(r.token_ids) == len(r.logprobs) <= (16 if g is a else 5)
            assert (r.logprobs <= 0).all()


def test_backlog_pauses_new_prompts(rollouts: Rollouts, redis_client: redis.Redis) -> None:
    keys = RunKeys(RUN)
    for _ in range(8):  # scored stream at the bound: the learner is behind
        redis_client.xadd(keys.scored, {b"d": b"x"})
    assert rollouts.gate.reason() == "backlog"
    # entries the learner has read and holds until its next checkpoint are not backlog
    redis_client.xgroup_create(keys.scored, LEARNER_GROUP, id="0")
    redis_client.xreadgroup(LEARNER_GROUP, "learner-0", {keys.scored: ">"}, count=1)
    assert rollouts.gate.reason() is None
    redis_client.xadd(keys.scored, {b"d": b"x"})
    gid = rollouts.submit(math("1 + 1"))
    assert not rollouts.wait_idle(1.0)
    assert redis_client.xlen(keys.rollouts) == 0
    redis_client.delete(keys.scored)
    assert rollouts.wait_idle(120)
    assert [g.group_id for g in read_groups(redis_client, 1)] == [gid]


def test_staleness_pauses_new_prompts(rollouts: Rollouts, engine: Engine,
                                      redis_client: redis.Redis) -> None:
    keys = RunKeys(RUN)
    assert rollouts.gate.reason() is None
    # the learner publishes its version and its own staleness bound: 2 behind, bound 1
    redis_client.hset(keys.learner_state, mapping={"version": engine.version - 2, "max_staleness": 1})
    assert rollouts.gate.reason() == "staleness"
    rollouts.submit(math("2 + 2"))
    assert not rollouts.wait_idle(1.0)
    redis_client.hset(keys.learner_state, "version", engine.version)
    assert rollouts.wait_idle(120)


def test_bad_prompts_are_refused_by_field(rollouts: Rollouts) -> None:
    with pytest.raises(ValueError, match="prompt"):
        math("")
    with pytest.raises(InvalidRequest, match="max_tokens"):
        rollouts.submit(math("hi", sampling=Sampling(max_tokens=100_000)))
