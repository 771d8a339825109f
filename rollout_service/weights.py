"""Where a new weight version comes from: the learner's broadcast group, or a safetensors URL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import httpx
import redis
import torch
from safetensors.torch import load as load_safetensors

from protocol.weight_transfer import (Manifest, WeightGroup, create_group, receive, receive_manifest,
                                      verify)
from protocol.streams import RunKeys
from protocol.weights import WeightVersion, checksum_tensors
from rollout_service.engine import Engine


class WeightError(ValueError):
    """A version that cannot be loaded (unreachable URL, checksum mismatch, bad file)."""


def fetch_safetensors(url: str, timeout_s: float = 300.0) -> dict[str, torch.Tensor]:
    """GET a safetensors file of HF state-dict names."""
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            resp = client.get(url)
    except httpx.HTTPError as exc:
        raise WeightError(f"url: cannot fetch {url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise WeightError(f"url: GET {url} answered {resp.status_code}")
    try:
        return load_safetensors(resp.content)
    except Exception as exc:  # safetensors raises its own error types on malformed files
        raise WeightError(f"url: {url} is not a safetensors file: {exc}") from None


def load_from_url(engine: Engine, url: str, version: int, checksum: str | None = None) -> float:
    """Download, verify (when a checksum is given) and load a version; returns load seconds."""
    named = fetch_safetensors(url)
    names = sorted(named)
    got = checksum_tensors((n, named[n]) for n in names)
    if checksum and got != checksum:
        raise WeightError(f"checksum: {url} hashes to {got[:12]}, expected {checksum[:12]}")
    return engine.update_weights(lambda: ((n, named[n]) for n in names), version, got)


def load_published(engine: Engine, record: WeightVersion) -> float:
    if not record.url:
        raise WeightError(f"url: weight version {record.version} has no pull URL")
    return load_from_url(engine, record.url, record.version, record.checksum)


class BroadcastReceiver:
    """This engine's membership of the learner's weight-transfer group (joined once, reused)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.group: WeightGroup | None = None
        self._lock = threading.Lock()

    def join(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
             timeout_s: float = 300.0) -> WeightGroup:
        with self._lock:
            key = (rank, world_size)
            if self.group is None or (self.group.rank, self.group.world_size) != key:
                if rank <= 0:
                    raise WeightError("rank: engines join as rank >= 1 (rank 0 is the learner)")
                self.group = create_group(host, port, rank, world_size, backend, timeout_s)
            return self.group

    def load(self, buffer: bool = False) -> tuple[Manifest, float]:
        """Receive the version rank 0 is broadcasting (manifest first, in-band) and load it.

        Unbuffered, buckets are loaded as they land (no second copy of the model). Buffered, the
        whole version is received and verified first, so the learner is released before the
        engine drains in-flight requests and loads: it can train the next step meanwhile.
        Returns (manifest, seconds of the load).
        """
        if self.group is None:
            raise WeightError("broadcast: join the learner's group first")
        group = self.group
        manifest = receive_manifest(group)
        if buffer:
            received = [t for bucket in receive(group, manifest) for t in bucket]
            verify(received, manifest)
            return manifest, self.engine.update_weights(lambda: iter(received), manifest.version,
                                                        manifest.checksum)

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            received: list[tuple[str, torch.Tensor]] = []
            for bucket in receive(group, manifest):
                received.extend(bucket)
                yield from bucket
            verify(received, manifest)  # raises inside the load: the engine is marked unhealthy

        return manifest, self.engine.update_weights(tensors, manifest.version, manifest.checksum)


def follow_weights(engine: Engine, client: redis.Redis, keys: RunKeys) -> threading.Thread:
    """Pull every version the learner publishes (and the current one, for a late joiner).

    The learner writes the WeightVersion record to the `keys.weights` hash and PUBLISHes on the
    channel of the same name; the message is only a wake-up, the hash is the truth.
    """
    log = logging.getLogger("ringrl.rollout.weights")
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.weights)

    def catch_up() -> None:
        raw = client.hgetall(keys.weights)
        if not raw:
            return
        record = WeightVersion.from_redis(raw)
        if record.version > engine.version:
            seconds = load_published(engine, record)
            log.info("loaded weight version %d in %.2fs", record.version, seconds)

    def run() -> None:
        while True:
            try:
                catch_up()
            except WeightError as exc:  # a bad publication: report, keep serving the old version
                log.error("weight version not loaded: %s", exc)
            if engine.error is not None:
                return
            pubsub.get_message(timeout=5.0)

    thread = threading.Thread(target=run, daemon=True, name="rollout-follow-weights")
    thread.start()
    return thread
