"""/metrics (Prometheus), /healthz and /readyz for every process: on a FastAPI app, or standalone.

Standalone, prometheus_client's WSGI app answers /metrics (content negotiation, gzip, `name[]`
filters) and a few lines beside it answer /healthz, served by wsgiref from a daemon thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer
from starlette.requests import Request

from protocol.auth import Tokens, authenticated, refusal

Health = Callable[[], dict[str, Any]]
"""Returns a JSON-able status. A truthy "ok" key means alive (GET /healthz answers 200, else 503:
the orchestrator should restart the process); "ready" (default: "ok") means it can serve now (GET
/readyz; 503 while e.g. Redis is unreachable: take it out of rotation, do not restart it)."""

PROBES = ("/healthz", "/readyz")


def _health_body(health: Health, path: str = "/healthz", brief: bool = False) -> tuple[int, bytes]:
    """`brief`: liveness alone, for a caller without the token (protocol/auth.py)."""
    try:
        status = health()
    except Exception as exc:  # a failing probe is itself the answer: unhealthy, with the reason
        status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    status.setdefault("ready", bool(status.get("ok")))
    up = status.get("ok") and (path == "/healthz" or status["ready"])
    return (200 if up else 503), json.dumps({"ok": bool(up)} if brief else status).encode()


def mount_observability(app: Any, registry: CollectorRegistry, health: Health) -> None:
    """Add GET /metrics, GET /healthz (liveness) and GET /readyz (readiness) to a FastAPI app.
    Access is the app's BearerAuth middleware's; /healthz answers a stranger liveness alone."""
    from fastapi import Response

    @app.get("/metrics", include_in_schema=False, response_model=None)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=None)
    def healthz(request: Request) -> Response:
        brief = not request.scope.get("state", {}).get("authenticated", True)
        code, body = _health_body(health, "/healthz", brief)
        return Response(body, status_code=code, media_type="application/json")

    @app.get("/readyz", response_model=None)
    def readyz() -> Response:
        code, body = _health_body(health, "/readyz")
        return Response(body, status_code=code, media_type="application/json")


def observability_handler(registry: CollectorRegistry, health: Health,
                          tokens: Tokens = Tokens()) -> type[BaseHTTPRequestHandler]:
    """A stdlib request handler serving /metrics and /healthz; subclass it and extend `route`
    to serve more paths from the same port (all behind `tokens`)."""
    # Kept for learner/publish.py: its weight server streams safetensors files from this handler's port.

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            header = self.headers.get("Authorization")
            refused = refusal(tokens, "GET", path, header)
            if refused is not None:
                self.send_body(refused[0], json.dumps({"detail": refused[1], "field": "authorization"}).encode(),
                               "application/json")
            elif not self.route(path, authenticated(tokens, header)):
                self.send_body(404, b'{"detail": "not found"}', "application/json")

        def route(self, path: str, trusted: bool = True) -> bool:
            """Answer `path` and return True, or return False for a 404; `trusted`: the caller
            showed a token (or none is needed)."""
            if path == "/metrics":
                self.send_body(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in PROBES:
                self.send_body(*_health_body(health, path, brief=not trusted), "application/json")
            else:
                return False
            return True

        def send_body(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def observability_app(registry: CollectorRegistry, health: Health,
                      tokens: Tokens = Tokens()) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: /metrics is prometheus_client's, /healthz the probe's JSON, anything else 404."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        header = environ.get("HTTP_AUTHORIZATION")
        refused = refusal(tokens, environ.get("REQUEST_METHOD", "GET"), path, header)
        if refused is not None:
            code, body = refused[0], json.dumps({"detail": refused[1], "field": "authorization"}).encode()
        elif path == "/metrics":
            return metrics(environ, start_response)
        elif path in PROBES:
            code, body = _health_body(health, path, brief=not authenticated(tokens, header))
        else:
            code, body = 404, b'{"detail": "not found"}'
        start_response(f"{code} {HTTPStatus(code).phrase}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve_observability(registry: CollectorRegistry, health: Health, host: str = "127.0.0.1",
                        port: int = 0, tokens: Tokens = Tokens()) -> WSGIServer:
    """Serve /metrics and /healthz from a daemon thread; for processes without a web app.

    Port 0 picks a free port: read it back from `server.server_address[1]`; `shutdown()` stops it.
    """
    server = make_server(host, port, observability_app(registry, health, tokens), ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="observability").start()
    return server
