"""The scoring API over real HTTP (uvicorn on loopback, httpx)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.reward.live import running_server


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(max_request_bytes=64 * 1024, max_batch=8) as url:
        yield url


def test_scores_a_mixed_batch(base_url: str) -> None:
    items = [
        {"task": "math", "response": "so \\boxed{\\frac{1}{2}}", "answer": "0.5"},
        {"task": "math", "response": "no idea", "answer": "0.5"},
        {"task": "code", "response": "```python\nprint(int(input()) * 2)\n```",
         "tests": {"io_tests": [{"stdin": "21\n", "stdout": "42"}]}},
        {"task": "code", "response": "```python\ndef f(x):\n    return x\n```",
         "tests": {"test_code": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}},
        {"task": "code", "response": "```python\nwhile True: pass\n```",
         "tests": {"io_tests": [{"stdout": "1"}]}},
    ]
    r = httpx.post(f"{base_url}/v1/score", json={"items": items}, timeout=60)
    assert r.status_code == 200, r.text
    got = [(x["reward"], x["status"]) for x in r.json()["results"]]
    assert got == [(1.0, "correct"), (0.0, "no_answer"), (1.0, "correct"),
                   (0.0, "runtime_error"), (0.0, "timeout")]


@pytest.mark.parametrize("body, field", [
    ({"items": [{"task": "math", "response": "x"}]}, "items.0.answer"),
    ({"items": [{"task": "code", "response": "x"}]}, "items.0.tests"),
    ({"items": [{"task": "poetry", "response": "x", "answer": "1"}]}, "items.0.task"),
    ({"items": [{"response": "x", "answer": "1"}]}, "items.0.task"),
    ({"items": [{"task": "math", "answer": "1"}]}, "items.0.response"),
    ({"items": []}, "items"),
    ({"items": [{"task": "code", "response": "x", "tests": {"test_code": "def check(c): pass"}}]},
     "items.0.tests.entry_point"),
    ({"items": [{"task": "code", "response": "x", "tests": {"io_tests": [], "test_code": None}}]},
     "items.0.tests"),
    ({"items": [{"task": "math", "response": "x", "answer": "1", "tests": {}}]}, "items.0.tests"),
    ({"items": [{"task": "math", "response": "x", "answer": "1"}] * 9}, "items"),
])
def test_bad_requests_name_the_field(base_url: str, body: dict, field: str) -> None:
    r = httpx.post(f"{base_url}/v1/score", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text
    assert r.json()["detail"].startswith(f"{field}: ")


def test_malformed_json_is_a_4xx(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/score", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body", r.text


def test_oversized_body_refused_by_content_length(base_url: str) -> None:
    big = {"items": [{"task": "math", "response": "x" * (100 * 1024), "answer": "1"}]}
    r = httpx.post(f"{base_url}/v1/score", json=big)
    assert r.status_code == 413 and "max_request_bytes" in r.text


def test_oversized_chunked_body_refused_while_streaming(base_url: str) -> None:
    """Chunked upload, no Content-Length: the server answers 413 after the limit, while the
    client has not finished sending (so it cannot have buffered the whole body)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        for _ in range(8):  # 128 KiB, twice the limit; the body is never terminated
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]


def test_health_metrics_and_docs(base_url: str) -> None:
    httpx.post(f"{base_url}/v1/score", json={"items": [
        {"task": "math", "response": "\\boxed{3}", "answer": "3"}]})
    assert httpx.get(f"{base_url}/healthz").json()["ok"] is True
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'ringrl_reward_verifications_total{status="correct",task="math"}' in metrics
    assert "ringrl_reward_latency_seconds_bucket" in metrics
    assert "ringrl_reward_sandbox_kills_total" in metrics
    assert httpx.get(f"{base_url}/openapi.json").json()["paths"]["/v1/score"]
    assert httpx.get(f"{base_url}/docs").status_code == 200
