"""Weight publication: hand each version to the transports (protocol/transport), announce it in Redis.

Names are the model's Hugging Face parameter names (what vLLM's `load_weights` takes); tied
weights appear once, under the name the model registered first (the input embedding).

The learner's HTTP server (stdlib, on a daemon thread, same port as /metrics and /healthz) serves
the pull transport's file store:
  GET /v1/weights/latest     -> WeightVersion JSON (404 before the first version)
  GET /v1/weights/{version}  -> the version as one safetensors file (404 if not kept)
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import torch
from prometheus_client import CollectorRegistry

from learner.distributed import full_tensor
from protocol.auth import Tokens
from protocol.metrics import observability_handler
from protocol.streams import RunKeys
from protocol.transport import WeightSender, WeightVersion, make_manifest
from protocol.transport.http_pull import SafetensorsStore

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def gathered_weights(model: torch.nn.Module, dtype: str = "float32") -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter once (tied ones under their first name), whole and cast to the published dtype,
    one at a time. Sharded parameters are gathered: with several ranks every rank must iterate it."""
    d = _DTYPES[dtype]
    for n, p in model.named_parameters():
        yield n, full_tensor(p.detach()).to(device="cpu", dtype=d).contiguous()


def named_weights(model: torch.nn.Module, dtype: str = "float32") -> dict[str, torch.Tensor]:
    return dict(gathered_weights(model, dtype))


def join_publish(model: torch.nn.Module, dtype: str) -> None:
    """A rank other than 0's part of a publish: the gathers, one parameter at a time, kept by none."""
    for _ in gathered_weights(model, dtype):
        pass


class WeightServer:
    """Serves the pull transport's store (the newest versions on disk), plus /metrics and /healthz."""

    def __init__(self, directory: str | Path, host: str, port: int, keep: int, public_url: str = "",
                 registry: CollectorRegistry | None = None,
                 health: Callable[[], dict[str, Any]] | None = None, tokens: Tokens = Tokens()) -> None:
        """`tokens`: every path but /healthz needs the API token (the weights are the model)."""
        self.registry = registry or CollectorRegistry()
        self.tokens = tokens
        self.health = health or (lambda: {"ok": True})
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.port = self.httpd.server_address[1]
        self.base_url = (public_url or f"http://{host}:{self.port}").rstrip("/")
        self.store = SafetensorsStore(directory, f"{self.base_url}/v1/weights", keep)
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="weights-http").start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: WeightServer) -> type[BaseHTTPRequestHandler]:
    class Handler(observability_handler(server.registry, server.health, server.tokens)):  # type: ignore[misc]
        def route(self, path: str, trusted: bool = True) -> bool:
            if path == "/v1/weights/latest":
                latest = server.store.latest
                if latest is None:
                    self._json(404, {"detail": "no weight version published yet"})
                else:
                    self.send_body(200, latest.model_dump_json().encode(), "application/json")
                return True
            m = re.fullmatch(r"/v1/weights/(\w+)", path)
            if m is None:
                return super().route(path, trusted)
            if not m.group(1).isdigit():
                self._json(400, {"detail": "version: must be a non-negative integer or 'latest'"})
                return True
            file = server.store.path(int(m.group(1)))
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
    """One call per version: every sender in turn (the pull store first, so a version is on disk
    before a broadcast waits on the engines), then the announcement (if Redis)."""

    def __init__(self, senders: list[WeightSender], dtype: str, bucket_bytes: int,
                 client: redis.Redis | None = None, run: str = "default") -> None:
        self.senders, self.dtype, self.bucket_bytes = senders, dtype, bucket_bytes
        self.client, self.run = client, run

    def publish(self, model: torch.nn.Module, version: int) -> WeightVersion:
        named = named_weights(model, self.dtype)
        manifest = make_manifest(named, version, self.bucket_bytes)
        urls = [sender.send(named, manifest) for sender in self.senders]
        record = manifest.record(next((u for u in urls if u), None))
        if self.client is not None:
            announce(self.client, self.run, record)
        return record
