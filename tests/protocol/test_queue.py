from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from protocol.codec import decode_group, encode_group
from protocol.queue import FIELD, QueueFull, StreamConsumer, StreamProducer
from protocol.schema import Group, MathReference, Response, TaskKind
from protocol.streams import dead_letter
from tests.protocol.strategies import make_group

ROOT = Path(__file__).resolve().parents[2]


def tiny_group(i: int) -> Group:
    return Group(group_id=f"g{i:06d}", prompt_id=str(i), task=TaskKind.math, prompt_token_ids=[1, 2],
                 reference=MathReference(answer="1"),
                 responses=[Response(token_ids=[i % 97, 3], logprobs=[-0.5, -0.25], policy_version=1)])


def out_ids(client: redis.Redis, stream: str) -> list[str]:
    return [decode_group(f[FIELD]).group_id for _, f in client.xrange(stream)]


def test_produce_consume_forward(redis_client: redis.Redis) -> None:
    prod = StreamProducer(redis_client, "in", max_len=100)
    sent = [make_group(seed=i) for i in range(10)]
    prod.produce(sent)
    cons = StreamConsumer(redis_client, "in", "workers", "c1")
    got = cons.read(count=100, block_ms=100)
    assert [e.group.group_id for e in got] == [g.group_id for g in sent]
    assert cons.pending() == 10
    assert cons.forward([e.id for e in got], "out", [encode_group(e.group) for e in got]) == 10
    assert redis_client.xlen("in") == 0 and cons.pending() == 0
    assert out_ids(redis_client, "out") == [g.group_id for g in sent]


def test_backpressure_blocks_then_resumes(redis_client: redis.Redis) -> None:
    prod = StreamProducer(redis_client, "in", max_len=10)
    prod.produce([tiny_group(i) for i in range(10)])
    with pytest.raises(QueueFull):
        prod.produce([tiny_group(99)], timeout=0.3)
    assert redis_client.xlen("in") == 10  # nothing was appended past the bound
    cons = StreamConsumer(redis_client, "in", "workers", "c1")

    def drain_later() -> None:
        time.sleep(0.3)
        cons.ack([e.id for e in cons.read(count=5)])

    t = threading.Thread(target=drain_later)
    t.start()
    start = time.monotonic()
    prod.produce([tiny_group(100)], timeout=10)
    t.join()
    assert time.monotonic() - start >= 0.2
    assert redis_client.xlen("in") == 6


def test_malformed_entries_go_to_dead_letter(redis_client: redis.Redis) -> None:
    prod = StreamProducer(redis_client, "in", max_len=100)
    prod.produce([tiny_group(1)])
    bad_id = redis_client.xadd("in", {FIELD: b"\x93not a group"})
    no_field = redis_client.xadd("in", {b"other": b"x"})
    prod.produce([tiny_group(2)])
    cons = StreamConsumer(redis_client, "in", "workers", "c1")
    got = cons.read(count=10, block_ms=100)
    assert [e.group.group_id for e in got] == ["g000001", "g000002"]
    dead = redis_client.xrange(dead_letter("in"))
    assert [f[b"source_id"] for _, f in dead] == [bad_id, no_field]
    assert b"not MessagePack" in dead[0][1][b"reason"]
    assert dead[0][1][FIELD] == b"\x93not a group"  # the bytes are kept for inspection
    assert b"no 'd' field" in dead[1][1][b"reason"]
    assert cons.dead_lettered == 2 and cons.pending() == 2  # only the good ones await an ack


def test_stalled_consumer_cannot_duplicate_after_reclaim(redis_client: redis.Redis) -> None:
    StreamProducer(redis_client, "in").produce([tiny_group(i) for i in range(5)])
    slow = StreamConsumer(redis_client, "in", "workers", "slow", claim_idle_ms=100)
    held = slow.read(count=5)
    time.sleep(0.2)
    fast = StreamConsumer(redis_client, "in", "workers", "fast", claim_idle_ms=100, reclaim_every_s=0)
    taken = fast.read(count=5)
    assert all(e.reclaimed for e in taken) and len(taken) == 5
    assert fast.forward([e.id for e in taken], "out", [encode_group(e.group) for e in taken]) == 5
    # The stalled consumer wakes up and tries to hand off what it no longer owns: refused.
    assert slow.forward([e.id for e in held], "out", [encode_group(e.group) for e in held]) == 0
    assert sorted(out_ids(redis_client, "out")) == [f"g{i:06d}" for i in range(5)]


def test_killed_consumer_entries_processed_exactly_once(redis_client: redis.Redis,
                                                        redis_url: str) -> None:
    total = 10_000
    prod = StreamProducer(redis_client, "in", max_len=total)
    for start in range(0, total, 1000):
        prod.produce([tiny_group(i) for i in range(start, start + 1000)])
    StreamConsumer(redis_client, "in", "workers", "setup")  # creates the group
    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.protocol.consumer_proc", redis_url, "in", "out", "workers",
         "victim", "0.05"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        # Let it forward some batches, then kill it while it holds a batch it has not acked.
        while int(redis_client.get("victim:forwarded") or 0) < 1500:
            assert time.monotonic() < deadline, "victim consumer made no progress"
            time.sleep(0.01)
        while int(redis_client.get("victim:held") or 0) == int(redis_client.get("victim:forwarded") or 0):
            time.sleep(0.001)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        victim.kill()
    held = int(redis_client.get("victim:held")) - int(redis_client.get("victim:forwarded"))
    assert held > 0, "the victim was not holding unacked entries when killed"
    assert int(redis_client.xpending("in", "workers")["pending"]) >= held

    rescuer = StreamConsumer(redis_client, "in", "workers", "rescuer", claim_idle_ms=300,
                             reclaim_every_s=0.1)
    deadline = time.monotonic() + 120
    while redis_client.xlen("in") > 0:
        assert time.monotonic() < deadline, "rescuer did not drain the stream"
        entries = rescuer.read(count=500, block_ms=100)
        rescuer.forward([e.id for e in entries], "out", [encode_group(e.group) for e in entries])

    counts = collections.Counter(out_ids(redis_client, "out"))
    assert len(counts) == total, f"lost {total - len(counts)} groups"
    assert max(counts.values()) == 1, f"duplicated: {[k for k, v in counts.items() if v > 1][:5]}"
    assert rescuer.reclaimed >= held
    assert int(redis_client.xpending("in", "workers")["pending"]) == 0
