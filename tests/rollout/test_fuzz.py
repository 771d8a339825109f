"""Hostile input, generated: the rollout API fuzzed from its own OpenAPI document (schemathesis),
every operation, every check (not a server error; status codes, content types, headers and bodies
as declared; schema-valid requests accepted; invalid ones refused; ...). Then the server still
serves: healthy, no loop restarted, a normal completion answered.

Sizes are bounded where the work is generation (CPU): at most a few prompts, choices and tokens per
request (`_bound`). Two things a fuzzer cannot bring are supplied: a weight file to pull (a
schema-valid `url` is pointed at a real one, so valid updates really load), and a learner to
broadcast (a schema-valid `broadcast` request is made stale, answered 409; broadcasts are tested in
test_weights.py). The server runs with a token, as deployed: the document declares the bearer
scheme and the fuzz sends it (schemathesis' ignored_auth check then also tries without).
RINGRL_FUZZ_EXAMPLES / RINGRL_FUZZ_SEED run it longer or elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from schemathesis.config import SchemathesisConfig

from protocol.auth import Tokens
from rollout_service.engine import Engine
from rollout_service.server import create_app
from rollout_service.streaming import Rollouts
from tests.conftest import serving
from tests.rollout.conftest import engine_config, publish

RUN = "fuzz"
EXAMPLES = int(os.environ.get("RINGRL_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("RINGRL_FUZZ_SEED", "15"))
TOKENS = Tokens(api="fuzz-token", admin="fuzz-admin")
CONFIG = dict(max_tokens=4, n=2, max_n=4, max_pending_prompts=16, max_inflight_groups=4,
              weight_connect_timeout_s=1.0, max_request_bytes=1 << 20)


@pytest.fixture(scope="module")
def engine(model_dir) -> Iterator[Engine]:  # this module's own: small defaults, small bounds
    with Engine(str(model_dir("qwen3_moe")), engine_config(**CONFIG)) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine: Engine, redis_url: str, model_dir, file_server) -> Iterator[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    rollouts = Rollouts(engine, client, RUN, engine_config(**CONFIG), max_backlog=8)
    weights = publish(file_server, model_dir("qwen3_moe", 1), "fuzz.safetensors")
    try:
        with serving(create_app(engine, rollouts, tokens=TOKENS)) as url:
            yield {"url": url, "weights": weights, "engine": engine, "rollouts": rollouts}
    finally:
        rollouts.stop()
        client.close()


@pytest.fixture(scope="module")
def api(server: dict[str, Any]) -> Any:
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "mode": "all", "database": "none"},
        "checks": {"enabled": True},
        "request-timeout": 60,
        # The admin token: weight updates need it, and every other route takes it too.
        "headers": TOKENS.headers(admin=True),
    })
    return schemathesis.openapi.from_url(f"{server['url']}/openapi.json", config=config,
                                         headers=TOKENS.headers())


schema = schemathesis.pytest.from_fixture("api")


@pytest.fixture(autouse=True)
def _pytest9_node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's from_fixture reads `node._nodeid`, which pytest 9.2 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _text(v: Any, most: int = 64) -> Any:
    return v[:most] if isinstance(v, str) else v


def _ids(v: Any, most: int = 32) -> Any:
    return v[:most] if isinstance(v, list) and v and all(isinstance(t, int) for t in v) else v


def _cap(body: dict[str, Any], key: str, most: int) -> None:
    v = body.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > most:  # JSON's 510.0 is an integer
        body[key] = most


def _bound_prompt(p: Any) -> Any:
    """A completion's prompt (any of its four forms): a few short prompts."""
    if isinstance(p, str):
        return _text(p)
    if isinstance(p, list):
        if p and all(isinstance(t, int) for t in p):
            return _ids(p)
        return [_ids(_text(x)) for x in p[:4]]
    return p


def _bound(case: Any, server: dict[str, Any]) -> None:
    """Keep generation work small and point weight requests at what exists (see the docstring).
    Only schema-valid cases are touched (cutting an invalid one could make it valid); the server
    refuses the others before any generation."""
    body = case.body
    if not isinstance(body, dict) or case.meta is None or not case.meta.generation.mode.is_positive:
        return
    path = case.operation.path
    if path == "/v1/completions":
        _cap(body, "max_tokens", 4)
        _cap(body, "n", 2)
        if "prompt" in body:
            body["prompt"] = _bound_prompt(body["prompt"])
    elif path == "/v1/rollouts" and isinstance(body.get("prompts"), list):
        body["prompts"] = body["prompts"][:4]
        for p in body["prompts"]:
            if isinstance(p, dict):
                _cap(p, "n", 2)
                for key, cut in (("prompt", _text), ("prompt_token_ids", _ids)):
                    if key in p:
                        p[key] = cut(p[key])
                if isinstance(p.get("sampling"), dict):
                    _cap(p["sampling"], "max_tokens", 4)
    elif path == "/v1/weights" and case.method.upper() == "POST":
        if isinstance(body.get("url"), str):
            body["url"] = server["weights"]
            body.pop("checksum", None)
        elif isinstance(body.get("broadcast"), dict):
            body["version"] = server["engine"].version  # no learner to broadcast: a stale version


@schema.parametrize()
def test_rollout_api_from_its_own_spec(case: Any, server: dict[str, Any]) -> None:
    _bound(case, server)
    case.call_and_validate(timeout=60)


def test_still_serving_after_the_fuzz(server: dict[str, Any]) -> None:
    url = server["url"]
    # The fuzz got past the token (401 is a declared answer, so it would pass without): valid
    # weight updates, which need the admin token, were loaded.
    assert server["engine"].version > 0
    health = httpx.get(f"{url}/healthz", headers=TOKENS.headers()).json()
    assert health["ok"], health
    assert all(loop["restarts"] == 0 for loop in health["rollouts"]["loops"].values()), health
    resp = httpx.post(f"{url}/v1/completions", json={"model": "ringrl-policy", "prompt": "1 + 1 =",
                                                     "max_tokens": 4}, headers=TOKENS.headers(), timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["finish_reason"] in ("stop", "length")
