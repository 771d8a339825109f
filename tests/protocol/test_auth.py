"""Bearer tokens over real HTTP: the reward API (FastAPI), the learner's weight server and the
standalone /metrics server (stdlib). Rollout's admin route: tests/rollout/test_auth.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from learner.publish import WeightServer
from protocol.auth import Tokens, TokenError, load_tokens
from protocol.config.auth import AuthConfig
from protocol.metrics import serve_observability
from reward_service.server import create_app
from tests.conftest import serving
from tests.reward.conftest import reward_config

API, ADMIN = "api-4f0c1d2e9b", "admin-77aa01be"
TOKENS = Tokens(api=API, admin=ADMIN)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def reward() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    app = create_app(reward_config(), tokens=TOKENS)
    routes = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    routes += [("GET", "/openapi.json"), ("GET", "/docs")]
    with serving(app) as url:
        yield url, routes


def test_every_reward_route_but_healthz_needs_the_token(reward: tuple[str, list[tuple[str, str]]],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    url, routes = reward
    assert ("POST", "/v1/score") in routes and ("GET", "/metrics") in routes
    caplog.set_level(logging.DEBUG)
    for method, path in routes:
        if path == "/healthz":
            continue
        for headers in ({}, _bearer("wrong"), {"Authorization": API}, {"Authorization": "Basic " + API},
                        _bearer(API[:-1]), _bearer(API + "x" * 5000)):
            r = httpx.request(method, url + path, headers=headers, json={"items": []})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["field"] == "authorization" and r.headers["www-authenticate"] == "Bearer"
        for token in (API, ADMIN):
            r = httpx.request(method, url + path, headers=_bearer(token), json={"items": []})
            assert r.status_code not in (401, 403), (method, path, r.text)
    assert API not in caplog.text and ADMIN not in caplog.text


def test_healthz_tells_a_stranger_liveness_only(reward: tuple[str, list[tuple[str, str]]]) -> None:
    url, _ = reward
    stranger = httpx.get(f"{url}/healthz")
    assert stranger.status_code == 200 and stranger.json() == {"ok": True}
    trusted = httpx.get(f"{url}/healthz", headers=_bearer(API)).json()
    assert trusted["ok"] is True and len(trusted) > 1


def test_an_authorised_request_is_served(reward: tuple[str, list[tuple[str, str]]]) -> None:
    url, _ = reward
    item = {"task": "math", "response": "\\boxed{4}", "answer": "4"}
    r = httpx.post(f"{url}/v1/score", json={"items": [item]}, headers=_bearer(API), timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["reward"] == 1.0


def test_learner_weight_server_needs_the_token(tmp_path: Path) -> None:
    server = WeightServer(tmp_path, "127.0.0.1", 0, keep=1, tokens=Tokens(api=API))
    url = f"http://127.0.0.1:{server.port}"
    try:
        for path in ("/v1/weights/latest", "/v1/weights/1", "/metrics", "/readyz", "/nope"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers=_bearer("x" + API)).status_code == 401
            assert httpx.get(url + path, headers=_bearer(API)).status_code != 401
        assert httpx.get(f"{url}/healthz").json() == {"ok": True}
    finally:
        server.close()


def test_standalone_metrics_server_needs_the_token_unless_opened() -> None:
    for tokens, stranger in ((Tokens(api=API), 401), (Tokens(api=API, metrics_open=True), 200)):
        server = serve_observability(CollectorRegistry(), lambda: {"ok": True, "detail": 1}, tokens=tokens)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            assert httpx.get(f"{url}/metrics").status_code == stranger
            assert httpx.get(f"{url}/readyz").status_code == 401
            assert httpx.get(f"{url}/metrics", headers=_bearer(API)).status_code == 200
            assert httpx.get(f"{url}/healthz").json() == {"ok": True}
            assert httpx.get(f"{url}/healthz", headers=_bearer(API)).json()["detail"] == 1
        finally:
            server.shutdown()


def test_tokens_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    api, admin = tmp_path / "api", tmp_path / "admin"
    api.write_text(API + "\n")
    admin.write_text(ADMIN)
    cfg = AuthConfig(token_file=str(api), admin_token_file=str(admin))
    assert load_tokens(cfg, env={}) == Tokens(api=API, admin=ADMIN)
    assert load_tokens(cfg, env={"RINGRL_API_TOKEN": "from-env"}).api == "from-env"
    assert load_tokens(AuthConfig(), env={}) == Tokens() and not Tokens().enabled
    assert API not in repr(load_tokens(cfg, env={}))
    (tmp_path / "empty").write_text("\n")
    for path, why in ((tmp_path / "missing", f"cannot read {tmp_path}/missing"),
                      (tmp_path / "empty", f"{tmp_path}/empty is empty")):
        with pytest.raises(TokenError, match=f"^auth.token_file: {why}"):
            load_tokens(AuthConfig(token_file=str(path)), env={})
