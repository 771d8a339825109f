"""Weight transport by HTTP pull: the learner stores each version as one safetensors file, engines GET it.

The sender is only the versioned file store; serving the folder is the job of whatever HTTP server
the learner runs (`url_prefix` is where that server answers). Each file's metadata carries its
version and checksum, and the receiver verifies the checksum the record names before handing out a
single tensor. No rendezvous: an engine may pull at any time, so one that joins late or restarts
catches up from the newest record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from protocol.transport import (
    Manifest,
    Received,
    WeightError,
    WeightVersion,
    checksum_tensors,
)

log = logging.getLogger("ringrl.weights")


class SafetensorsStore:
    """The sender: `v{N:08d}.safetensors` in `directory`, the newest `keep` versions kept."""

    def __init__(self, directory: str | Path, url_prefix: str, keep: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")
        self.keep = keep
        self.latest: WeightVersion | None = None
        self._lock = threading.Lock()

    def path(self, version: int) -> Path:
        return self.dir / f"v{version:08d}.safetensors"

    def send(self, named: Mapping[str, torch.Tensor], manifest: Manifest) -> str:
        target = self.path(manifest.version)
        tmp = target.with_suffix(".tmp")  # renamed when complete: a reader never sees half a file
        save_file(dict(named), str(tmp), metadata={"version": str(manifest.version),
                                                   "checksum": manifest.checksum})
        tmp.rename(target)
        url = f"{self.url_prefix}/{manifest.version}"
        with self._lock:
            self.latest = manifest.record(url)
            for old in sorted(self.dir.glob("v*.safetensors"))[:-self.keep]:
                old.unlink(missing_ok=True)
        return url


class HttpReceiver:
    """The receiver: GET the record's URL, verify, hand out the tensors sorted by name.

    The file arrives whole, so `buffer` changes nothing here. A record without a checksum (a file
    from elsewhere) is loaded unverified and takes the checksum its tensors hash to.

    A URL whose host is not in `allowed_hosts` (None: any) is refused before any connection, and
    redirects are not followed, so a request cannot point the server at another host; why a fetch
    from an allowed host failed goes to the log, not to the caller.
    """

    def __init__(self, timeout_s: float = 300.0, connect_timeout_s: float = 5.0,
                 headers: Mapping[str, str] | None = None,
                 allowed_hosts: Collection[str] | None = None) -> None:
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.headers = dict(headers or {})
        self.allowed_hosts = None if allowed_hosts is None else frozenset(allowed_hosts)

    def check_url(self, url: str) -> None:
        """Raise WeightError unless `url` is http(s) on an allowed host."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            raise WeightError("url: not a valid URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise WeightError("url: must be an http:// or https:// URL with a host")
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            raise WeightError("url: weights are pulled only from the learner's hosts (rollout.weight_hosts)")

    def _fetch(self, url: str) -> dict[str, torch.Tensor]:
        self.check_url(url)
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False,
                              headers=self.headers) as client:
                resp = client.get(url)
        except httpx.HTTPError as exc:
            log.error("weights: GET %s failed: %s: %s", url, type(exc).__name__, exc)
            raise WeightError("url: the weights could not be fetched (the rollout log says why)") from None
        if resp.status_code != 200:
            log.error("weights: GET %s answered %d", url, resp.status_code)
            raise WeightError(f"url: the weights could not be fetched (HTTP {resp.status_code})")
        try:
            return load_safetensors(resp.content)
        except Exception as exc:  # safetensors raises its own error types on malformed files
            log.error("weights: %s is not a safetensors file: %s", url, exc)
            raise WeightError("url: the answer is not a safetensors file") from None

    def receive(self, record: WeightVersion, buffer: bool = True) -> Received:
        if not record.url:
            raise WeightError(f"url: weight version {record.version} has no pull URL")
        named = self._fetch(record.url)
        pairs = sorted(named.items())
        got = checksum_tensors(pairs)
        if record.checksum and got != record.checksum:
            raise WeightError(f"checksum: {record.url} hashes to {got[:12]}, expected {record.checksum[:12]}")
        return Received(record.version, got, iter(pairs))
