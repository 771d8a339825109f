"""Weight transport over a collective group: the learner (rank 0) broadcasts, the engines receive.

The group is built straight from a TCPStore, not through `init_process_group`, because the engines
already own a default group of their own (vLLM creates one) and a process may have only one.

A version travels as its manifest (length, then JSON bytes) followed by byte buckets: tensors, in
manifest order, are viewed as bytes and packed per `plan_buckets`, one broadcast per bucket.
Receivers rebuild every tensor from the manifest alone, so any dtype mix (bf16 included) travels in
one pass with no per-tensor calls, and they need no side channel to learn what is coming.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from protocol.netaddr import local_address
from protocol.transport import (
    DTYPES,
    Manifest,
    Received,
    WeightError,
    WeightVersion,
    plan_buckets,
    verify,
)


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
                 timeout_s: float = 300.0, connect_timeout_s: float | None = None) -> WeightGroup:
    """Join (rank > 0) or host (rank 0) the weight group; every collective times out after
    `timeout_s`, the rendezvous after `connect_timeout_s` (default: the same)."""
    timeout = timedelta(seconds=timeout_s)
    rendezvous = timedelta(seconds=connect_timeout_s if connect_timeout_s is not None else timeout_s)
    try:
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=rendezvous,
                              wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:  # DistStoreError is a RuntimeError
        if rank == 0:
            raise
        raise WeightError(f"broadcast: no weight group at {host}:{port} within "
                          f"{rendezvous.total_seconds():g}s ({type(exc).__name__})") from None
    prefixed = dist.PrefixStore("ringrl-weights", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        # gloo binds this address: the rendezvous host on rank 0, on the others the local address
        # on the route to it (on another node the learner's address is not ours to bind)
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host if rank == 0 else local_address(host))]
        pg = dist.ProcessGroupGloo(prefixed, rank, world_size, opts)
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, opts)
    else:
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    store.set_timeout(timeout)
    return WeightGroup(pg, store, rank, world_size)


def _flat_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def send_manifest(group: WeightGroup, manifest: Manifest, src: int = 0) -> None:
    raw = torch.frombuffer(bytearray(manifest.model_dump_json().encode()), dtype=torch.uint8)
    group.broadcast(torch.tensor([raw.numel()], dtype=torch.int64), src)
    group.broadcast(raw, src)


def receive_manifest(group: WeightGroup, src: int = 0) -> Manifest:
    size = torch.zeros(1, dtype=torch.int64)
    group.broadcast(size, src)
    raw = torch.empty(int(size), dtype=torch.uint8)
    group.broadcast(raw, src)
    return Manifest.model_validate_json(raw.numpy().tobytes())


def send_buckets(group: WeightGroup, named: Mapping[str, torch.Tensor], manifest: Manifest, src: int = 0) -> None:
    for bucket in plan_buckets(manifest):
        parts = [_flat_bytes(named[manifest.tensors[i].name]) for i in bucket]
        group.broadcast(parts[0] if len(parts) == 1 else torch.cat(parts), src)


def receive_buckets(group: WeightGroup, manifest: Manifest, src: int = 0,
                    device: torch.device | str = "cpu") -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The tensors of `send_buckets`, one bucket at a time, as they land (unverified)."""
    for bucket in plan_buckets(manifest):
        specs = [manifest.tensors[i] for i in bucket]
        buf = torch.empty(sum(s.nbytes for s in specs), dtype=torch.uint8, device=device)
        group.broadcast(buf, src)
        out, offset = [], 0
        for s in specs:
            out.append((s.name, buf[offset:offset + s.nbytes].view(DTYPES[s.dtype]).reshape(s.shape)))
            offset += s.nbytes
        yield out


class BroadcastSender:
    """The learner's end (rank `src` of the group): the manifest in-band, then the buckets.

    Returns once every rank has taken each bucket, so a publish waits for the slowest engine to
    receive (not to load: receivers that buffer are loading while the learner moves on).
    """

    def __init__(self, group: WeightGroup, src: int = 0) -> None:
        self.group, self.src = group, src

    def send(self, named: Mapping[str, torch.Tensor], manifest: Manifest) -> None:
        send_manifest(self.group, manifest, self.src)
        send_buckets(self.group, named, manifest, self.src)


class BroadcastReceiver:
    """An engine's membership of the learner's group (joined once, reused for every version)."""

    def __init__(self) -> None:
        self.group: WeightGroup | None = None
        self._at: tuple[str, int, int, int] | None = None  # (host, port, rank, world) of `group`
        self._lock = threading.Lock()

    def join(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
             timeout_s: float = 300.0, connect_timeout_s: float | None = None) -> WeightGroup:
        """Join the group at host:port; a call naming the group already joined keeps it, any other
        replaces it (the learner re-forms the group when a member is replaced)."""
        with self._lock:
            if self.group is None or self._at != (host, port, rank, world_size):
                if rank <= 0:
                    raise WeightError("rank: engines join as rank >= 1 (rank 0 is the learner)")
                self.group = create_group(host, port, rank, world_size, backend, timeout_s, connect_timeout_s)
                self._at = (host, port, rank, world_size)
            return self.group

    def receive(self, record: WeightVersion, buffer: bool = True) -> Received:
        """Receive the version the learner is broadcasting now, whatever `record` says: a collective
        must be drained by every rank, so callers compare `Received.version` with what they expected.
        Streamed (`buffer=False`), the buckets are received as `tensors` is consumed."""
        if self.group is None:
            raise WeightError("broadcast: join the learner's group first")
        group = self.group
        manifest = receive_manifest(group)
        if buffer:
            received = [t for bucket in receive_buckets(group, manifest) for t in bucket]
            verify(received, manifest.checksum, manifest.version)
            return Received(manifest.version, manifest.checksum, iter(received))

        def streamed() -> Iterator[tuple[str, torch.Tensor]]:
            received: list[tuple[str, torch.Tensor]] = []
            for bucket in receive_buckets(group, manifest):
                received.extend(bucket)
                yield from bucket
            verify(received, manifest.checksum, manifest.version)

        return Received(manifest.version, manifest.checksum, streamed())
