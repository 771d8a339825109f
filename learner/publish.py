"""Weight publication: push over a broadcast group, pull over HTTP, announce in Redis.

Names are the model's Hugging Face parameter names (what vLLM's `load_weights` takes); tied
weights appear once, under the name the model registered first (the input embedding).

HTTP (stdlib server on a daemon thread, same port as /metrics and /healthz):
  GET /v1/weights/latest     -> WeightVersion JSON (404 before the first version)
  GET /v1/weights/{version}  -> the version as one safetensors file (404 if not kept)
The safetensors metadata carries version and checksum; the checksum is `checksum_tensors` over the
tensors sorted by name, the same as the broadcast manifest's.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import torch
from prometheus_client import CollectorRegistry
from safetensors.torch import save_file

from protocol import weight_transfer as wt
from protocol.metrics import observability_handler
from protocol.streams import RunKeys
from protocol.weights import WeightVersion

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def named_weights(model: torch.nn.Module, dtype: str = "float32") -> dict[str, torch.Tensor]:
    """Every parameter once (tied ones under their first name), cast to the published dtype."""
    d = _DTYPES[dtype]
    return {n: p.detach().to(d).contiguous() for n, p in model.named_parameters()}


class WeightServer:
    """Keeps the newest versions on disk and serves them, plus /metrics and /healthz."""

    def __init__(self, directory: str | Path, host: str, port: int, keep: int, public_url: str = "",
                 registry: CollectorRegistry | None = None,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.latest: WeightVersion | None = None
        self._lock = threading.Lock()
        self.registry = registry or CollectorRegistry()
        self.health = health or (lambda: {"ok": True})
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.port = self.httpd.server_address[1]
        self.base_url = (public_url or f"http://{host}:{self.port}").rstrip("/")
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="weights-http").start()

    def path(self, version: int) -> Path:
        return self.dir / f"v{version:08d}.safetensors"

    def store(self, named: dict[str, torch.Tensor], manifest: wt.Manifest) -> WeightVersion:
        target = self.path(manifest.version)
        tmp = target.with_suffix(".tmp")
        save_file(named, str(tmp), metadata={"version": str(manifest.version), "checksum": manifest.checksum})
        tmp.rename(target)
        record = WeightVersion(version=manifest.version, checksum=manifest.checksum,
                               url=f"{self.base_url}/v1/weights/{manifest.version}",
                               num_bytes=manifest.num_bytes)
        with self._lock:
            self.latest = record
            for old in sorted(self.dir.glob("v*.safetensors"))[:-self.keep]:
                old.unlink(missing_ok=True)
        return record

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: WeightServer) -> type[BaseHTTPRequestHandler]:
    class Handler(observability_handler(server.registry, server.health)):  # type: ignore[misc]
        def route(self, path: str) -> bool:
            if path == "/v1/weights/latest":
                if server.latest is None:
                    self._json(404, {"detail": "no weight version published yet"})
                else:
                    self.send_body(200, server.latest.model_dump_json().encode(), "application/json")
                return True
            m = re.fullmatch(r"/v1/weights/(\w+)", path)
            if m is None:
                return super().route(path)
            if not m.group(1).isdigit():
                self._json(400, {"detail": "version: must be a non-negative integer or 'latest'"})
                return True
            file = server.path(int(m.group(1)))
            if file.is_file():
                self._file(file)
            else:
                self._json(404, {"detail": f"version: {m.group(1)} is not kept here"})
            return True

        def _file(self, path: Path) -> None:
            try:
                f = path.open("rb")  # opened before headers: a version pruned meanwhile is a 404
            except FileNotFoundError:
                return self._json(404, {"detail": "version: no longer kept"})
            with f:
                size = path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                shutil.copyfileobj(f, self.wfile)

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self.send_body(code, json.dumps(body).encode(), "application/json")

    return Handler


def announce(client: redis.Redis, run: str, record: WeightVersion) -> None:
    """Latest version into the run's weights hash, and a PUBLISH on the channel of the same name."""
    key = RunKeys(run).weights
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping=record.to_redis())
    pipe.publish(key, record.model_dump_json())
    pipe.execute()


class Publisher:
    """One call per version: store for pull, broadcast to the group (if any), announce (if Redis)."""

    def __init__(self, server: WeightServer, dtype: str, bucket_bytes: int,
                 group: wt.WeightGroup | None = None, client: redis.Redis | None = None,
                 run: str = "default") -> None:
        self.server, self.dtype, self.bucket_bytes = server, dtype, bucket_bytes
        self.group, self.client, self.run = group, client, run

    def publish(self, model: torch.nn.Module, version: int) -> WeightVersion:
        named = named_weights(model, self.dtype)
        manifest = wt.make_manifest(named, version, self.bucket_bytes)
        record = self.server.store(named, manifest)
        if self.group is not None:
            wt.send_version(self.group, named, manifest)
        if self.client is not None:
            announce(self.client, self.run, record)
        return record
