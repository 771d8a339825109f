"""/metrics (Prometheus) and /healthz for every process: on a FastAPI app, or standalone."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Health = Callable[[], dict[str, Any]]
"""Returns a JSON-able status; a truthy "ok" key means healthy (HTTP 200), else 503."""


def _health_body(health: Health) -> tuple[int, bytes]:
    try:
        status = health()
    except Exception as exc:  # a failing probe is itself the answer: unhealthy, with the reason
        status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return (200 if status.get("ok") else 503), json.dumps(status).encode()


def mount_observability(app: Any, registry: CollectorRegistry, health: Health) -> None:
    """Add GET /metrics and GET /healthz to a FastAPI app."""
    from fastapi import Response

    @app.get("/metrics", include_in_schema=False, response_model=None)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=None)
    def healthz() -> Response:
        code, body = _health_body(health)
        return Response(body, status_code=code, media_type="application/json")


def serve_observability(registry: CollectorRegistry, health: Health, host: str = "127.0.0.1",
                        port: int = 0) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz from a daemon thread; for processes without a web app.

    Port 0 picks a free port: read it back from `server.server_address[1]`.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                code, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                code, body = _health_body(health)
                ctype = "application/json"
            else:
                code, body, ctype = 404, b'{"detail": "not found"}', "application/json"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="observability").start()
    return server
