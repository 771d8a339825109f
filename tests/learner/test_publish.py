"""Weight publication: gloo broadcast to a receiver process, HTTP pull, Redis announcement."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import httpx
import redis
import torch
from safetensors.torch import load as load_safetensors

from learner.publish import Publisher, WeightServer, named_weights
from learner.trainer import load_model
from protocol.streams import RunKeys
from protocol.transport import WeightVersion, checksum_tensors
from protocol.transport.broadcast import (
    BroadcastReceiver,
    BroadcastSender,
    create_group,
)
from protocol.transport.http_pull import HttpReceiver
from tests.conftest import free_port


def _engine(port: int, q: mp.Queue) -> None:
    """Stands in for a rollout engine: joins the group, takes two versions (each verified)."""
    rx = BroadcastReceiver()
    rx.join("127.0.0.1", port, 1, 2, timeout_s=60)
    for v in (1, 2):
        got = rx.receive(WeightVersion(version=v))
        q.put((got.version, got.checksum, [n for n, _ in got.tensors]))


def test_publish_broadcast_pull_and_announce(moe_path: Path, tmp_path: Path, redis_client: redis.Redis) -> None:
    model = load_model(str(moe_path))
    ctx = mp.get_context("spawn")
    port, q = free_port(), ctx.Queue()
    proc = ctx.Process(target=_engine, args=(port, q))
    proc.start()
    server = WeightServer(tmp_path / "w", "127.0.0.1", 0, keep=1)
    sub = redis_client.pubsub()
    sub.subscribe(RunKeys("r1").weights)
    try:
        group = create_group("127.0.0.1", port, 0, 2, timeout_s=60)
        pub = Publisher([server.store, BroadcastSender(group)], "bfloat16", bucket_bytes=1 << 14,
                        client=redis_client, run="r1")
        first = pub.publish(model, 1)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        second = pub.publish(model, 2)
        got = [q.get(timeout=60) for _ in range(2)]
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
    assert [(v, c) for v, c, _ in got] == [(1, first.checksum), (2, second.checksum)]
    assert first.checksum != second.checksum
    names = got[0][2]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied: once

    # pull path
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        latest = WeightVersion.model_validate_json(http.get("/v1/weights/latest").content)
        assert latest.version == 2 and latest.checksum == second.checksum
        body = http.get(latest.url.removeprefix(server.base_url)).content
        tensors = load_safetensors(body)
        assert checksum_tensors(sorted(tensors.items())) == latest.checksum
        assert all(t.dtype == torch.bfloat16 for t in tensors.values())
        assert http.get("/v1/weights/1").status_code == 404  # keep=1 pruned it
        bad = http.get("/v1/weights/abc")
        assert bad.status_code == 400 and "version" in bad.json()["detail"]
    pulled = HttpReceiver(timeout_s=30).receive(latest)  # the published record is all a puller needs
    assert (pulled.version, pulled.checksum) == (2, second.checksum)
    server.close()
    # the pulled names load into a fresh model of the same config (tied head follows the embedding)
    fresh = load_model(str(moe_path))
    missing, unexpected = fresh.load_state_dict({n: t.float() for n, t in tensors.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}

    # announcement
    assert WeightVersion.from_redis(redis_client.hgetall(RunKeys("r1").weights)).version == 2
    msgs = []
    while (m := sub.get_message(timeout=5)) is not None:
        if m["type"] == b"message" or m["type"] == "message":
            msgs.append(WeightVersion.model_validate_json(m["data"]).version)
    assert msgs == [1, 2]
    sub.close()


def test_named_weights_cover_the_state_dict(moe_path: Path) -> None:
    model = load_model(str(moe_path))
    named = named_weights(model)
    sd = model.state_dict()
    assert set(named) == set(sd) - {"lm_head.weight"}
