"""The rollout API's tokens and weight sources over real HTTP: every route but /healthz needs the
API token, a weight update the admin token, and weights come only from the allowed hosts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute

from protocol.auth import Tokens
from rollout_service.engine import Engine
from rollout_service.server import create_app
from tests.conftest import free_port, serving

API, ADMIN = "api-token-1b2c", "admin-token-9f8e"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def served(engine: Engine) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    app = create_app(engine, tokens=Tokens(api=API, admin=ADMIN), weight_hosts={"127.0.0.1"})
    routes = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    with serving(app) as url:
        yield url, routes


def test_every_route_but_healthz_needs_a_token(served: tuple[str, list[tuple[str, str]]]) -> None:
    url, routes = served
    assert {("POST", "/v1/rollouts"), ("POST", "/v1/completions"), ("POST", "/v1/weights")} <= set(routes)
    for method, path in routes + [("GET", "/openapi.json"), ("GET", "/docs")]:
        if path == "/healthz":
            continue
        for headers in ({}, _bearer("nope"), _bearer(API.upper())):
            r = httpx.request(method, url + path, headers=headers, json={})
            # In the shape of the route's surface: OpenAI's `error.param` on /v1/completions and /v1/models.
            body = r.json()
            field = body["error"]["param"] if "error" in body else body["field"]
            assert r.status_code == 401 and field == "authorization", (method, path, r.text)
    assert httpx.get(f"{url}/healthz").json() == {"ok": True}


def test_weight_updates_need_the_admin_token(served: tuple[str, list[tuple[str, str]]]) -> None:
    url, _ = served
    body = {"version": 10**6, "url": "http://127.0.0.1:1/v.safetensors"}
    r = httpx.post(f"{url}/v1/weights", json=body, headers=_bearer(API))
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    # Admitted; the pull itself fails (nothing listens), answered as a refusal naming the field.
    r = httpx.post(f"{url}/v1/weights", json=body, headers=_bearer(ADMIN), timeout=60)
    assert r.status_code == 400 and r.json()["field"] == "url", r.text
    assert httpx.get(f"{url}/v1/weights", headers=_bearer(API)).json()["version"] == 0


def test_completions_with_the_api_token(served: tuple[str, list[tuple[str, str]]]) -> None:
    url, _ = served
    r = httpx.post(f"{url}/v1/completions", headers=_bearer(API), timeout=120,
                   json={"model": "ringrl-policy", "prompt": "1 + 1 =", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"]


@pytest.mark.parametrize("body, field", [
    ({"url": "http://10.0.0.1:8002/v1/weights/3"}, "url"),
    ({"url": "http://localhost:8002/v1/weights/3"}, "url"),  # allowed hosts are matched as written
    ({"url": "file:///etc/shadow"}, "url"),
    ({"url": "http://[::1/x"}, "url"),
    ({"broadcast": {"host": "10.0.0.1", "port": 29500, "rank": 1, "world_size": 2}}, "broadcast.host"),
    ({"url": "http://127.0.0.1:1/x", "version": 2**53}, "version"),
    ({"url": "http://127.0.0.1:1/x", "checksum": "not-hex"}, "checksum"),
    ({"broadcast": {"host": "127.0.0.1", "port": 29500, "rank": 1, "world_size": 2},
      "checksum": "0" * 64}, "checksum"),  # a broadcast carries its own: one given here would be ignored
])
def test_weight_sources_outside_the_allow_list_are_refused(
        served: tuple[str, list[tuple[str, str]]], body: dict[str, object], field: str) -> None:
    """Refused before any connection and with one answer per kind, so the server cannot be used to
    reach or map other hosts."""
    url, _ = served
    r = httpx.post(f"{url}/v1/weights", json={"version": 5, **body}, headers=_bearer(ADMIN), timeout=30)
    assert 400 <= r.status_code < 500 and r.json()["field"] == field, r.text


def test_a_broadcast_nobody_hosts_is_answered_within_the_connect_timeout(
        served: tuple[str, list[tuple[str, str]]]) -> None:
    """An allowed host with no weight group: the request gets a 400 (rollout.weight_connect_timeout_s)
    instead of a thread parked for the collective timeout, and the server goes on serving."""
    url, _ = served
    spec = {"host": "127.0.0.1", "port": free_port(), "rank": 1, "world_size": 2}
    r = httpx.post(f"{url}/v1/weights", json={"version": 5, "broadcast": spec}, headers=_bearer(ADMIN), timeout=120)
    assert r.status_code == 400 and r.json()["field"] == "broadcast", r.text
    assert httpx.get(f"{url}/readyz", headers=_bearer(API)).status_code == 200
