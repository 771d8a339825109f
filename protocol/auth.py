"""Bearer tokens on every HTTP endpoint: who may call what, for the ASGI apps and the stdlib servers.

Only GET /healthz is open, and without a token it answers nothing but liveness (`{"ok": ...}`), so
an orchestrator can probe it while a stranger learns nothing about the process. Everything else needs
the API token; routes that change what a server serves (weight updates) need the admin token. Tokens
are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from protocol.config import ConfigError
from protocol.config.auth import AuthConfig

if TYPE_CHECKING:
    from protocol.body_limit import Render

log = logging.getLogger("ringrl.auth")

API_TOKEN_ENV, ADMIN_TOKEN_ENV = "RINGRL_API_TOKEN", "RINGRL_ADMIN_TOKEN"
OPEN_PATH = "/healthz"
MAX_TOKEN_BYTES = 4096
"""A longer Authorization header is refused before it is compared."""


class TokenError(ConfigError):
    """A token that cannot be read; str() is one line naming the setting."""


@dataclass(frozen=True)
class Tokens:
    api: str | None = None
    admin: str | None = None
    metrics_open: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.api or self.admin)

    def headers(self, admin: bool = False) -> dict[str, str]:
        """What a client of the APIs sends (empty when no token is configured)."""
        token = (self.admin or self.api) if admin else self.api
        return {"Authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:  # a Tokens in a log line or traceback must not carry the secrets
        return f"Tokens(api={'set' if self.api else None}, admin={'set' if self.admin else None})"


def read_secret(env_name: str, file: str, setting: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret from the variable `env_name` or else the file `file` (None if neither is set); a
    file that cannot be read or holds no single token is a TokenError naming `setting`."""
    env = os.environ if env is None else env
    if env.get(env_name):
        return env[env_name].strip() or None
    if not file:
        return None
    try:
        token = Path(file).read_text().strip()
    except OSError as exc:
        raise TokenError(f"{setting}: cannot read {file}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"{setting}: {file} is empty")
    if len(token.encode()) > MAX_TOKEN_BYTES or not token.isprintable() or " " in token:
        raise TokenError(f"{setting}: {file} must hold one printable token of at most {MAX_TOKEN_BYTES} bytes")
    return token


def load_tokens(config: AuthConfig, env: Mapping[str, str] | None = None) -> Tokens:
    env = os.environ if env is None else env
    return Tokens(api=read_secret(API_TOKEN_ENV, config.token_file, "auth.token_file", env),
                  admin=read_secret(ADMIN_TOKEN_ENV, config.admin_token_file, "auth.admin_token_file", env),
                  metrics_open=config.metrics_open)


def warn_if_open(tokens: Tokens, host: str, what: str) -> None:
    if not tokens.enabled and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("%s: listening on %s with no API token: anyone who reaches it may use it "
                    "(set auth.token_file or %s)", what, host, API_TOKEN_ENV)


def refusal(tokens: Tokens, method: str, path: str, authorization: str | None,
            admin: bool = False) -> tuple[int, str] | None:
    """None when the request may go on, else (status, reason). GET /healthz always goes on (the
    caller trims its answer when `authenticated` says no)."""
    if not tokens.enabled or path == OPEN_PATH or (tokens.metrics_open and path == "/metrics"):
        return None
    presented = _bearer(authorization)
    if presented is None:
        return 401, "authorization: send `Authorization: Bearer <token>`"
    if admin:
        if not _equal(presented, tokens.admin or tokens.api):
            return (403, "authorization: this request needs the admin token") if _equal(presented, tokens.api) \
                else (401, "authorization: wrong token")
        return None
    if not (_equal(presented, tokens.api) or _equal(presented, tokens.admin)):
        return 401, "authorization: wrong token"
    return None


def authenticated(tokens: Tokens, authorization: str | None) -> bool:
    presented = _bearer(authorization)
    return not tokens.enabled or (presented is not None and
                                  (_equal(presented, tokens.api) or _equal(presented, tokens.admin)))


def _bearer(authorization: str | None) -> str | None:
    if not authorization or len(authorization) > MAX_TOKEN_BYTES + 7:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _equal(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


class BearerAuth:
    """ASGI middleware: `refusal` on every HTTP request; `admin_routes` are (METHOD, path) pairs.
    Sets scope["state"]["authenticated"] for routes (GET /healthz) that answer strangers less."""

    def __init__(self, app: ASGIApp, tokens: Tokens, admin_routes: Collection[tuple[str, str]] = (),
                 render: Render | None = None) -> None:
        """`render`: the refusal's body in the shape of the route refused (protocol.body_limit.Render;
        default `{"detail", "field": "authorization"}`)."""
        self.app, self.tokens, self.admin_routes = app, tokens, frozenset(admin_routes)
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
        method, path = scope["method"], scope["path"]
        refused = refusal(self.tokens, method, path, header, admin=(method, path) in self.admin_routes)
        if refused is not None:
            status, reason = refused
            body = json.dumps({"detail": reason, "field": "authorization"} if self.render is None else
                              self.render(path, status, "authorization", reason.partition(": ")[2])).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["authenticated"] = authenticated(self.tokens, header)
        await self.app(scope, receive, send)
