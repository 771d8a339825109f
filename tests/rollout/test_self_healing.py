"""The rollout loop survives what a services run throws at it: an error in a loop (restarted), a
Redis restart (retried; nothing lost), a stop with work in hand (handed back), and its gate bounds
the data's age by the learner's pace, whoever feeds prompts."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from protocol.codec import decode_group
from protocol.queue import FIELD, connect
from protocol.streams import RunKeys
from rollout_service.engine import Engine
from rollout_service.streaming import Prompt, Rollouts, Stopping
from tests.conftest import RedisProcess
from tests.rollout.conftest import RUN, engine_config
from tests.rollout.test_streaming import math

KEYS = RunKeys(RUN)


def test_gate_bounds_the_data_age_by_the_learners_pace(rollouts: Rollouts, engine: Engine,
                                                       redis_client: redis.Redis) -> None:
    # bound 2 steps, the learner consumes 2 groups a step: at most 4 groups may wait ahead
    redis_client.hset(KEYS.learner_state, mapping={"version": engine.version, "max_staleness": 2,
                                                   "groups_in": 10, "steps": 5})
    for _ in range(3):
        redis_client.xadd(KEYS.rollouts, {b"d": b"x"})
    assert rollouts.gate.reason() is None
    assert rollouts.gate.reason(inflight=1) == "staleness"  # 3 waiting + 1 generating
    redis_client.xadd(KEYS.rollouts, {b"d": b"x"})
    assert rollouts.gate.reason() == "staleness"
    redis_client.delete(KEYS.rollouts)
    # an engine that fell behind the learner by more than the bound generates nothing to train
    redis_client.hset(KEYS.learner_state, "version", engine.version + 3)
    assert rollouts.gate.reason() == "staleness"


def test_an_error_in_the_admission_loop_restarts_it(rollouts: Rollouts, redis_client: redis.Redis,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real, failures = rollouts.gate.reason, []

    def fails_once(inflight: int = 0) -> str | None:
        if not failures:
            failures.append(1)
            raise redis.ResponseError("injected")
        return real(inflight)

    monkeypatch.setattr(rollouts.gate, "reason", fails_once)
    gid = rollouts.submit(math("1 + 2"))
    assert rollouts.wait_idle(120)
    assert [decode_group(f[FIELD]).group_id for _, f in redis_client.xrange(KEYS.rollouts)] == [gid]
    loop = rollouts.health()["loops"]["rollout-admit"]
    assert loop["restarts"] == 1 and "injected" in loop["last_error"] and rollouts.health()["ok"]


def test_a_redis_restart_loses_no_group(engine: Engine, own_redis: RedisProcess) -> None:
    r = Rollouts(engine, connect(own_redis.url), RUN, engine_config(), max_backlog=64)
    try:
        gids = [r.submit(math(f"{i} + 1")) for i in range(6)]
        own_redis.kill()  # groups finish while Redis is away: the writer retries
        time.sleep(2)
        own_redis.start()  # AOF: the stream as it was
        assert r.wait_idle(180)
        client = connect(own_redis.url)
        assert sorted(decode_group(f[FIELD]).group_id for _, f in client.xrange(KEYS.rollouts)) == sorted(gids)
        assert r.health()["ok"]
    finally:
        r.stop()


def test_stop_hands_back_what_it_could_not_finish(rollouts: Rollouts, redis_client: redis.Redis) -> None:
    for _ in range(8):  # backlog at its bound: nothing is admitted
        redis_client.xadd(KEYS.scored, {b"d": b"x"})
    gids = [rollouts.submit(math(f"{i} + 2", stage="math")) for i in range(3)]
    stopper = threading.Thread(target=rollouts.stop, args=(0.0,))
    stopper.start()
    stopper.join(30)
    with pytest.raises(Stopping):
        rollouts.submit(math("late"))
    back = redis_client.xrange(KEYS.returned)
    assert sorted(f[b"group_id"].decode() for _, f in back) == sorted(gids)
    prompts = [Prompt.model_validate(json.loads(f[b"prompt"])) for _, f in back]
    assert {p.stage for p in prompts} == {"math"} and {p.prompt for p in prompts} == {"0 + 2", "1 + 2", "2 + 2"}
    assert rollouts.stats()["handed_back"] == 3 and rollouts.stats()["active"] == 0


def test_groups_waiting_for_room_keep_their_slots(engine: Engine, redis_client: redis.Redis) -> None:
    # The rollouts stream is full (no reward worker reads it yet): finished groups wait for the
    # writer, and no more than max_inflight_groups are ever generated ahead of it.
    r = Rollouts(engine, redis_client, RUN, engine_config(max_inflight_groups=2), max_backlog=3)

    def within_bounds() -> None:
        assert redis_client.xlen(KEYS.rollouts) <= 3 and r._held <= 2

    try:
        for _ in range(3):
            redis_client.xadd(KEYS.scored, {b"d": b"x"})  # the gate opens only when these go
        gids = [r.submit(math(f"{i} + 3")) for i in range(6)]
        time.sleep(3)
        assert redis_client.xlen(KEYS.rollouts) == 0 and r.stats()["active"] == 6
        redis_client.delete(KEYS.scored)
        # Six groups, room for three: the writer stops short of them all and stays there, with
        # three in the stream, or with two if the next two finished together (a batch waits for room
        # for all of it): then both hold their slots and nothing more starts.
        deadline = time.monotonic() + 120
        while not (r.written >= 3 or (r.written == 2 and r._held == 2 and not r._inflight)) \
                and time.monotonic() < deadline:
            within_bounds()
            time.sleep(0.05)
        time.sleep(2)  # a writer that let finished groups pile up would now be past the bound
        within_bounds()
        assert 2 <= r.written <= 3 and r.stats()["active"] == 6 - r.written
        # A reader takes what is there, repeatedly: the rest follow, never past the bound.
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while len(seen) < 6 and time.monotonic() < deadline:
            within_bounds()
            for entry_id, fields in redis_client.xrange(KEYS.rollouts):
                seen.append(decode_group(fields[FIELD]).group_id)
                redis_client.xdel(KEYS.rollouts, entry_id)
            time.sleep(0.05)
        assert sorted(seen) == sorted(gids)
        assert r.wait_idle(30) and r.written == 6
    finally:
        r.stop()
