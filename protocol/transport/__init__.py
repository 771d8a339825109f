"""How a weight version travels from the learner to the engines: the interface and its shared parts.

A version is named by a `WeightVersion` record (what the learner announces) and described by a
`Manifest` (every tensor's name, dtype and shape, in transfer order, plus a checksum over all of
them). Two transports implement the interface, one file each, chosen by `learner.weight_transport`:

- `broadcast.py`: the learner pushes each version over a collective group it shares with the
  engines (gloo on CPU, NCCL on GPU); the manifest travels in-band. Needs a rendezvous.
- `http_pull.py`: the learner stores each version as a safetensors file; engines GET its URL.
  Needs nothing but HTTP, so it also serves an engine that joins late or restarts.

Both ends checksum the same way (`checksum_tensors` over the tensors sorted by name), so a version
received either way is verified against the same string.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from pydantic import BaseModel, Field

DTYPES: dict[str, torch.dtype] = {
    str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                        torch.int32, torch.uint8, torch.int8, torch.bool)
}


MAX_VERSION = 2**53 - 1
"""Largest weight version: exact in JSON numbers and in every integer field a version travels in."""


class WeightError(ValueError):
    """A version that cannot be received or loaded. The message reads "<field>: <why>"."""


class WeightVersion(BaseModel):
    """The record that names a published version (the Redis weights hash, GET /v1/weights/latest)."""

    version: int = Field(ge=0, le=MAX_VERSION, description="Monotonic policy version; 0 is the initial weights.")
    checksum: str | None = Field(
        default=None,
        description="sha256 over tensor names, dtypes, shapes and bytes; empty: not known to the "
                    "sender of the record (a file from elsewhere, a broadcast not yet received).")
    url: str | None = Field(default=None, description="Where the safetensors can be pulled.")
    num_bytes: int = Field(default=0, ge=0, description="Total tensor bytes.")
    published_at: float = Field(default_factory=time.time)

    def to_redis(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in self.model_dump().items()}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> WeightVersion:
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        return cls.model_validate({k: v or None for k, v in d.items()})


def checksum_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of (name, tensor) pairs in the order given; both ends iterate sorted by name.

    Names, dtypes, shapes and raw bytes are all covered, so a dtype change or a transposed copy
    is caught.
    """
    h = hashlib.sha256()
    for name, t in named:
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bf16 has no numpy dtype: hash its bytes through uint8
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def verify(named: Iterable[tuple[str, torch.Tensor]], checksum: str, version: int) -> None:
    """Raise WeightError if the tensors do not hash to `checksum`."""
    got = checksum_tensors(named)
    if got != checksum:
        raise WeightError(f"checksum: weight version {version} hashes to {got[:12]}, "
                          f"expected {checksum[:12]}")


class TensorSpec(BaseModel):
    name: str
    dtype: str = Field(description="torch dtype as str(), e.g. 'torch.bfloat16'.")
    shape: list[int]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
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

    def record(self, url: str | None = None) -> WeightVersion:
        return WeightVersion(version=self.version, checksum=self.checksum, url=url, num_bytes=self.num_bytes)


def make_manifest(named: Mapping[str, torch.Tensor], version: int, bucket_bytes: int = 64 << 20) -> Manifest:
    names = sorted(named)
    specs = [TensorSpec(name=n, dtype=str(named[n].dtype), shape=list(named[n].shape)) for n in names]
    return Manifest(version=version, tensors=specs, bucket_bytes=bucket_bytes,
                    checksum=checksum_tensors((n, named[n]) for n in names))


def plan_buckets(manifest: Manifest) -> list[list[int]]:
    """Indices of consecutive tensors per bucket: at most `bucket_bytes` each, except that a larger
    tensor gets a bucket of its own."""
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
class Received:
    """A version on its way in: which one it is, and its tensors in manifest order.

    `tensors` is verified against `checksum`: before the first pair when received whole, or after
    the last one when streamed bucket by bucket (it then raises WeightError at the end, so a
    loader that consumes it fails instead of finishing on bad weights).
    """

    version: int
    checksum: str
    tensors: Iterator[tuple[str, torch.Tensor]]


class WeightSender(Protocol):
    """The learner's end: make one version available to the engines."""

    def send(self, named: Mapping[str, torch.Tensor], manifest: Manifest) -> str | None:
        """Send (or store) every manifest tensor of `named`; returns the URL to pull it from, if any."""
        ...


class WeightReceiver(Protocol):
    """An engine's end: take in the version a record names."""

    def receive(self, record: WeightVersion, buffer: bool = True) -> Received:
        """Receive `record`'s version. `buffer`: the whole version is in memory and verified before
        `tensors` yields (the sender is released at once); otherwise it may arrive as it is consumed
        (no second copy of the model). Raises WeightError for a version that cannot be had."""
        ...
