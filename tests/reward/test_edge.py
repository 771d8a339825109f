"""The reward API's edge over real HTTP: every input bounded, invalid Unicode and non-finite numbers
refused with a 422 naming the field, unparseable bodies a 4xx, an item the verifier fails on scored
alone, and the OpenAPI document stating all of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from protocol.auth import Tokens
from protocol.config.reward import SandboxConfig
from protocol.schema import MathReference, TaskKind, VerdictStatus
from reward_service.scorer import Item, Scorer
from tests.reward.live import running_server

BOUNDS = {"max_request_bytes": 64 * 1024, "max_batch": 8, "max_response_chars": 1000,
          "max_answer_chars": 100, "max_io_tests": 3, "max_test_chars": 500}
GOOD = {"task": "math", "response": "so \\boxed{2}", "answer": "2"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(**BOUNDS) as base:
        yield base


def code(**tests: Any) -> dict[str, Any]:
    return {"task": "code", "response": "```python\nprint(1)\n```", "tests": tests}


def post_raw(url: str, body: str) -> httpx.Response:
    """`body` sent as written: JSON may carry what no encoder writes (a lone surrogate, NaN)."""
    return httpx.post(f"{url}/v1/score", content=body.encode(), headers={"content-type": "application/json"})


def assert_refused(r: httpx.Response, field: str, status: int = 422) -> None:
    assert r.status_code == status, r.text
    body = r.json()  # well-formed JSON even when the input was not encodable
    assert set(body) == {"detail", "field"} and body["field"] == field, body
    assert body["detail"].startswith(f"{field}: "), body


@pytest.mark.parametrize("item, field", [
    ({"task": "math", "response": "x" * 1001, "answer": "1"}, "items.0.response"),
    ({"task": "math", "response": "x", "answer": "1" * 101}, "items.0.answer"),
    (code(io_tests=[{"stdout": "1"}] * 4), "items.0.tests.io_tests"),
    (code(io_tests=[{"stdin": "1" * 501, "stdout": "1"}]), "items.0.tests.io_tests.0.stdin"),
    (code(io_tests=[{"stdout": "1"}, {"stdout": "1" * 501}]), "items.0.tests.io_tests.1.stdout"),
    (code(test_code="#" * 501, entry_point="f"), "items.0.tests.test_code"),
    (code(test_code="", entry_point="f"), "items.0.tests.test_code"),
    (code(test_code="def check(c): pass", entry_point="f" * 129), "items.0.tests.entry_point"),
    (code(test_code="def check(c): pass", entry_point="f 0 1"), "items.0.tests.entry_point"),
    (code(test_code="def check(c): pass", entry_point="fé"), "items.0.tests.entry_point"),
])
def test_every_bound_is_a_422_naming_the_field(url: str, item: dict[str, Any], field: str) -> None:
    assert_refused(httpx.post(f"{url}/v1/score", json={"items": [item, GOOD]}), field)


def test_items_at_the_bounds_are_scored(url: str) -> None:
    items = [{"task": "math", "response": "\\boxed{2}".ljust(1000), "answer": "2".ljust(100)},
             code(io_tests=[{"stdin": "x" * 500, "stdout": "1"}] * 3, test_code="#" * 500,
                  entry_point="f" * 128)]
    r = httpx.post(f"{url}/v1/score", json={"items": items}, timeout=60)
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["correct", "runtime_error"]  # no f defined


@pytest.mark.parametrize("item, field", [
    ('{"task": "math", "response": "\\ud800 so \\\\boxed{1}", "answer": "1"}', "items.0.response"),
    ('{"task": "math", "response": "x", "answer": "\\udfff"}', "items.0.answer"),
    ('{"task": "code", "response": "x", "tests": {"io_tests": [{"stdin": "\\ud800", "stdout": "1"}]}}',
     "items.0.tests.io_tests.0.stdin"),
    ('{"task": "code", "response": "x", "tests": {"io_tests": [{"stdout": "1\\udc00"}]}}',
     "items.0.tests.io_tests.0.stdout"),
    ('{"task": "code", "response": "x", "tests": {"test_code": "\\ud800", "entry_point": "f"}}',
     "items.0.tests.test_code"),
    ('{"task": "code", "response": "x", "tests": {"test_code": "def check(c): pass", "entry_point": "f\\ud800"}}',
     "items.0.tests.entry_point"),
    ('{"task": "\\ud800", "response": "x"}', "items.0.task"),
    ('{"task": "math", "response": "x", "answer": "1", "\\ud800": 1}', "items.0"),
])
def test_invalid_unicode_is_a_422_naming_the_field(url: str, item: str, field: str) -> None:
    assert_refused(post_raw(url, '{"items": [' + item + ', ' + json.dumps(GOOD) + ']}'), field)


@pytest.mark.parametrize("body, field", [
    ('{"items": [{"task": "math", "response": NaN, "answer": "1"}]}', "items.0.response"),
    ('{"items": [{"task": "math", "response": "x", "answer": Infinity}]}', "items.0.answer"),
    ('{"items": [{"task": "code", "response": "x", "tests": {"io_tests": [{"stdout": -Infinity}]}}]}',
     "items.0.tests.io_tests.0.stdout"),
    ('{"items": NaN}', "items"),
    ('{"items": [{"task": "math", "response": "x", "answer": "1"}], "seed": NaN}', "seed"),
])
def test_non_finite_numbers_are_a_422_naming_the_field(url: str, body: str, field: str) -> None:
    assert_refused(post_raw(url, body), field)


@pytest.mark.parametrize("body", ["[" * 30_000 + "]" * 30_000, '{"items": ' + "[" * 50_000, "1" * 5000],
                         ids=["nested-arrays", "nested-unclosed", "long-number"])
def test_unparseable_bodies_are_a_4xx_naming_the_body(url: str, body: str) -> None:
    r = post_raw(url, body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["field"] == "body", r.text


def test_the_service_still_serves_after_refusals(url: str) -> None:
    post_raw(url, "[" * 50_000)
    post_raw(url, '{"items": [{"task": "math", "response": "\\ud800", "answer": "1"}]}')
    r = httpx.post(f"{url}/v1/score", json={"items": [GOOD]})
    assert r.json()["results"][0]["status"] == "correct"
    assert httpx.get(f"{url}/healthz").json()["ok"] is True


def test_an_item_the_verifier_fails_on_does_not_fail_its_batch() -> None:
    """A sandbox that cannot start its interpreter raises inside the verifier: that code item scores
    0 with its own detail, and the math item beside it is still scored."""
    broken = SandboxConfig(backend="rlimit", python="/nonexistent/python3", wall_s=3.0, cpu_s=2)
    with running_server(sandbox=broken) as base:
        r = httpx.post(f"{base}/v1/score", json={"items": [code(io_tests=[{"stdout": "1"}]), GOOD]},
                       timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert (results[0]["reward"], results[0]["status"]) == (0.0, "wrong")
    assert results[0]["detail"].startswith("verifier error"), results[0]
    assert (results[1]["reward"], results[1]["status"]) == (1.0, "correct")


def test_the_openapi_document_states_the_rules(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    score = spec["paths"]["/v1/score"]["post"]["responses"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for status in ("400", "401", "403", "413", "422"):
        assert score[status]["content"]["application/json"]["schema"] == error, status
    assert schemas["ErrorBody"]["required"] == ["detail"]
    for path in ("/healthz", "/readyz"):
        assert {"200", "503"} <= set(spec["paths"][path]["get"]["responses"])
    assert {"401", "403"} <= set(spec["paths"]["/readyz"]["get"]["responses"])

    # Bounds come from the config.
    items = schemas["ScoreRequest"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, BOUNDS["max_batch"])
    assert schemas["MathItem"]["properties"]["response"]["maxLength"] == BOUNDS["max_response_chars"]
    assert schemas["MathItem"]["properties"]["answer"]["maxLength"] == BOUNDS["max_answer_chars"]
    assert schemas["Tests"]["properties"]["io_tests"]["maxItems"] == BOUNDS["max_io_tests"]
    assert schemas["IOTest"]["properties"]["stdin"]["maxLength"] == BOUNDS["max_test_chars"]
    # Cross-field rules: the task picks the item's shape (math: answer, code: tests); tests need
    # io_tests or test_code, and test_code needs entry_point.
    assert items["items"]["discriminator"]["propertyName"] == "task"
    assert set(schemas["MathItem"]["required"]) == {"task", "response", "answer"}
    assert set(schemas["CodeItem"]["required"]) == {"task", "response", "tests"}
    tests = schemas["Tests"]
    assert [branch["required"] for branch in tests["anyOf"]] == [["io_tests"], ["test_code"]]
    assert (tests["if"]["required"], tests["then"]["required"]) == (["test_code"], ["entry_point"])


def test_stream_items_out_of_bounds_score_alone(default_scorer: Scorer) -> None:
    """Stream items skip the HTTP edge: a response over the cap scores limit_exceeded, and a lone
    surrogate the verdict would quote is replaced (it would fail encoding the scored batch)."""
    cap = default_scorer.cfg.max_response_chars
    verdicts = default_scorer.score([
        Item(TaskKind.math, "\\boxed{1}" + " " * cap, MathReference(answer="1")),
        Item(TaskKind.math, "\\boxed{\ud800}", MathReference(answer="1")),
        Item(TaskKind.math, "\\boxed{1}", MathReference(answer="1"))])
    assert [v.status for v in verdicts] == [VerdictStatus.limit_exceeded, VerdictStatus.wrong,
                                           VerdictStatus.correct]
    verdicts[1].detail.encode("utf-8")


def test_with_a_token_the_document_declares_it_and_refusals_keep_the_shape() -> None:
    tokens = Tokens(api="edge-token")
    with running_server(tokens) as base:
        spec = httpx.get(f"{base}/openapi.json", headers=tokens.headers()).json()
        refused = httpx.post(f"{base}/v1/score", json={"items": [GOOD]})
        wrong = httpx.post(f"{base}/v1/score", json={"items": [GOOD]}, headers={"Authorization": "Bearer no"})
        scored = httpx.post(f"{base}/v1/score", json={"items": [GOOD]}, headers=tokens.headers())
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert spec["paths"]["/v1/score"]["post"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/readyz"]["get"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    for r in (refused, wrong):
        assert_refused(r, "authorization", status=401)
    assert scored.json()["results"][0]["status"] == "correct"
