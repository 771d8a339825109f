from __future__ import annotations

import multiprocessing as mp

import torch

from protocol import weight_transfer as wt
from tests.conftest import free_port


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.w": torch.randn(64, 32, generator=g),
        "layers.0.experts": torch.randn(8, 16, 16, generator=g).to(torch.bfloat16),
        "embed": torch.randn(300, 64, generator=g),
        "scale": torch.tensor(3.5),
        "count": torch.arange(5, dtype=torch.int64),
    }


def _receiver(port: int, rank: int, world: int, manifest_json: str, q: mp.Queue) -> None:
    manifest = wt.Manifest.model_validate_json(manifest_json)
    group = wt.create_group("127.0.0.1", port, rank, world, timeout_s=60)
    got: dict[str, torch.Tensor] = {}
    for bucket in wt.receive(group, manifest):
        got.update({n: t.clone() for n, t in bucket})
    wt.verify(((n, got[n]) for n in sorted(got)), manifest)
    q.put({n: t.float().sum().item() for n, t in got.items()})


def test_buckets_respect_bound_and_cover_every_tensor() -> None:
    m = wt.make_manifest(_tensors(0), version=1, bucket_bytes=10_000)
    buckets = wt.plan_buckets(m)
    assert sorted(i for b in buckets for i in b) == list(range(len(m.tensors)))
    for b in buckets:
        assert len(b) == 1 or sum(m.tensors[i].nbytes for i in b) <= 10_000
    assert len(buckets) < len(m.tensors)  # small tensors share buckets


def test_broadcast_to_two_receivers_bit_exact() -> None:
    ctx = mp.get_context("spawn")
    named = _tensors(1)
    manifest = wt.make_manifest(named, version=7, bucket_bytes=4096)
    port, q = free_port(), ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(port, r, 3, manifest.model_dump_json(), q))
             for r in (1, 2)]
    for p in procs:
        p.start()
    group = wt.create_group("127.0.0.1", port, 0, 3, timeout_s=60)
    wt.send(group, named, manifest)
    sums = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    want = {n: t.float().sum().item() for n, t in named.items()}
    assert sums == [want, want]


def test_corruption_detected() -> None:
    named = _tensors(2)
    manifest = wt.make_manifest(named, version=1)
    named["embed"] = named["embed"].clone()
    named["embed"][0, 0] += 1e-3
    try:
        wt.verify(sorted(named.items()), manifest)
    except ValueError as exc:
        assert "checksum mismatch" in str(exc)
    else:
        raise AssertionError("a changed tensor passed verification")
