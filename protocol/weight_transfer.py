"""The wire format of a weight version: a manifest, and bucketed broadcast over a private group.

The learner is rank 0 of a process group it shares with the rollout engines (gloo on CPU, NCCL on
GPU). The group is built straight from a TCPStore, not through `init_process_group`, because the
engines already own a default group of their own (vLLM creates one) and a process may have only one.

A version travels as byte buckets: tensors, in manifest order, are viewed as bytes and packed into
buckets of at most `bucket_bytes` (a tensor larger than that gets a bucket of its own), one
broadcast per bucket. Receivers rebuild every tensor from the manifest alone, so any dtype mix
(bf16 included) travels in one pass with no per-tensor calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, Field

from protocol.weights import checksum_tensors

_DTYPES: dict[str, torch.dtype] = {
    str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                        torch.int32, torch.uint8, torch.int8, torch.bool)
}


class TensorSpec(BaseModel):
    name: str
    dtype: str = Field(description="torch dtype as str(), e.g. 'torch.bfloat16'.")
    shape: list[int]

    @property
    def nbytes(self) -> int:
        n = _DTYPES[self.dtype].itemsize
        for s in self.shape:
            n *= s
        return n


class Manifest(BaseModel):
    version: int = Field(ge=0, description="Policy version these weights are.")
    tensors: list[TensorSpec] = Field(description="Every tensor, in transfer order (sorted by name).")
    bucket_bytes: int = Field(gt=0, description="Upper bound of one broadcast, except oversized tensors.")
    checksum: str = Field(description="checksum_tensors over the tensors in this order.")

    @property
    def num_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def make_manifest(named: dict[str, torch.Tensor], version: int, bucket_bytes: int = 64 << 20) -> Manifest:
    names = sorted(named)
    specs = [TensorSpec(name=n, dtype=str(named[n].dtype), shape=list(named[n].shape)) for n in names]
    return Manifest(version=version, tensors=specs, bucket_bytes=bucket_bytes,
                    checksum=checksum_tensors((n, named[n]) for n in names))


def plan_buckets(manifest: Manifest) -> list[list[int]]:
    """Indices of consecutive tensors per bucket."""
    buckets: list[list[int]] = []
    size = 0
    for i, spec in enumerate(manifest.tensors):
        if buckets and size + spec.nbytes <= manifest.bucket_bytes:
            buckets[-1].append(i)
            size += spec.nbytes
        else:
            buckets.append([i])
            size = spec.nbytes
    return buckets


@dataclass
class WeightGroup:
    """A process group plus the store it rendezvoused through (which must outlive it)."""

    pg: Any
    store: Any
    rank: int
    world_size: int

    def broadcast(self, buf: torch.Tensor, src: int) -> None:
        self.pg.broadcast(buf, src).wait()


def create_group(host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
                 timeout_s: float = 300.0) -> WeightGroup:
    """Join (rank > 0) or host (rank 0) the weight-transfer group without a default group."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                          wait_for_workers=False)
    prefixed = dist.PrefixStore("ringrl-weights", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        pg = dist.ProcessGroupGloo(prefixed, rank, world_size, opts)
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
    else:
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    return WeightGroup(pg, store, rank, world_size)


def _flat_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def send(group: WeightGroup, named: dict[str, torch.Tensor], manifest: Manifest, src: int = 0) -> None:
    """Broadcast a version from `src` (the learner). `named` must hold every manifest tensor."""
    for bucket in plan_buckets(manifest):
        parts = [_flat_bytes(named[manifest.tensors[i].name]) for i in bucket]
        buf = parts[0] if len(parts) == 1 else torch.cat(parts)
        group.broadcast(buf, src)


def receive(group: WeightGroup, manifest: Manifest, src: int = 0,
            device: torch.device | str = "cpu") -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Receive a version bucket by bucket, so the engine can load each as it lands."""
    for bucket in plan_buckets(manifest):
        specs = [manifest.tensors[i] for i in bucket]
        buf = torch.empty(sum(s.nbytes for s in specs), dtype=torch.uint8, device=device)
        group.broadcast(buf, src)
        out, offset = [], 0
        for s in specs:
            chunk = buf[offset:offset + s.nbytes]
            out.append((s.name, chunk.view(_DTYPES[s.dtype]).reshape(s.shape)))
            offset += s.nbytes
        yield out


def verify(named: Iterable[tuple[str, torch.Tensor]], manifest: Manifest) -> None:
    """Raise if the received tensors do not hash to the manifest's checksum."""
    got = checksum_tensors(named)
    if got != manifest.checksum:
        raise ValueError(f"weight version {manifest.version}: checksum mismatch "
                         f"(got {got[:12]}, manifest says {manifest.checksum[:12]})")


def send_manifest(group: WeightGroup, manifest: Manifest, src: int = 0) -> None:
    """Broadcast the manifest itself (length, then JSON bytes), so receivers need no side channel."""
    raw = torch.frombuffer(bytearray(manifest.model_dump_json().encode()), dtype=torch.uint8)
    group.broadcast(torch.tensor([raw.numel()], dtype=torch.int64), src)
    group.broadcast(raw, src)


def receive_manifest(group: WeightGroup, src: int = 0) -> Manifest:
    """The receiving side of `send_manifest`; call it before `receive` for each version."""
    size = torch.zeros(1, dtype=torch.int64)
    group.broadcast(size, src)
    raw = torch.empty(int(size), dtype=torch.uint8)
    group.broadcast(raw, src)
    return Manifest.model_validate_json(raw.numpy().tobytes())


def send_version(group: WeightGroup, named: dict[str, torch.Tensor], manifest: Manifest,
                 src: int = 0) -> None:
    """What a publisher sends for one version: the manifest in-band, then the buckets."""
    send_manifest(group, manifest, src)
    send(group, named, manifest, src)
