"""The HTTP API over real HTTP on loopback: rollouts, OpenAI completions, weights, 4xx by field."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis
import uvicorn

from protocol.codec import decode_group
from protocol.queue import FIELD
from protocol.streams import RunKeys
from rollout_service.engine import Engine
from rollout_service.server import create_app
from rollout_service.streaming import Rollouts
from tests.conftest import free_port
from tests.rollout.conftest import engine_config, publish

RUN = "srv"
REF = {"kind": "math", "answer": "5"}


@pytest.fixture(scope="module")
def base_url(engine: Engine, redis_url: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_url)
    rollouts = Rollouts(engine, client, RUN, engine_config())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, rollouts), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    rollouts.stop()


def test_openai_client_completions(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    out = client.completions.create(model="ringrl-policy", prompt="What is 3 + 4?", max_tokens=8,
                                    n=2, temperature=1.0, top_p=0.9, logprobs=1, stop=["\n\n"])
    assert len(out.choices) == 2
    for c in out.choices:
        assert c.finish_reason in ("stop", "length")
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) <= 8
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
    assert out.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in out.choices)


def test_rollouts_are_accepted_and_streamed(base_url: str, redis_client: redis.Redis) -> None:
    body = {"prompts": [{"task": "math", "reference": REF, "prompt": "1 + 1", "prompt_id": "a"},
                        {"task": "math", "reference": REF, "prompt_token_ids": [5, 6, 7], "n": 2,
                         "sampling": {"max_tokens": 4, "temperature": 0.5}}]}
    resp = httpx.post(f"{base_url}/v1/rollouts", json=body)
    assert resp.status_code == 202, resp.text
    ids = resp.json()["group_ids"]
    stream = RunKeys(RUN).rollouts
    end = time.monotonic() + 120
    while redis_client.xlen(stream) < 2 and time.monotonic() < end:
        time.sleep(0.02)
    groups = {g.group_id: g for g in (decode_group(f[FIELD]) for _, f in redis_client.xrange(stream))}
    assert set(groups) == set(ids)
    assert [len(groups[i].responses) for i in ids] == [4, 2]


@pytest.mark.parametrize("path,body,status,field", [
    ("/v1/rollouts", {"prompts": []}, 422, "prompts"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": ""}]}, 422, "prompt"),
    ("/v1/rollouts", {"prompts": [{"task": "poetry", "reference": REF, "prompt": "x"}]}, 422, "task"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x", "n": 0}]}, 422, "n"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x",
                                   "sampling": {"max_tokens": 9999}}]}, 400, "max_tokens"),
    ("/v1/completions", {"model": "ringrl-policy", "prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"model": "ringrl-policy", "prompt": "x", "n": 0}, 400, "n"),  # OpenAI: 400
    ("/v1/completions", {"model": "ringrl-policy", "prompt": "x", "max_tokens": 9999}, 400, "max_tokens"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model"),
    # Hostile values that used to end the admission loop or the engine thread, or grow memory:
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt_token_ids": [5, 10**9]}]},
     400, "prompt"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x",
                                   "sampling": {"seed": 2**64}}]}, 422, "seed"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x",
                                   "sampling": {"seed": -1}}]}, 422, "seed"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x",
                                   "sampling": {"temperature": 2.5}}]}, 422, "temperature"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x", "n": 10**6}]}, 400, "n"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x",
                                   "sampling": {"stop": ["a"] * 17}}]}, 422, "stop"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x"}] * 1025}, 422, "prompts"),
    ("/v1/completions", {"model": "ringrl-policy", "prompt": "x", "n": 10**6}, 400, "n"),
    ("/v1/completions", {"model": "ringrl-policy", "prompt": "x", "seed": 2**70}, 400, "seed"),
    ("/v1/completions", {"model": "ringrl-policy", "prompt": "x", "temperature": 3}, 400, "temperature"),
    ("/v1/completions", {"model": "ringrl-policy", "prompt": [[5, -1]]}, 400, "prompt"),
    # Unknown fields, JSON types and cross-field rules, by name (the schema states them too):
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x", "temperature": 0.5}]},
     422, "prompts.0.temperature"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x", "sampling": {"top_k": 5}}]},
     422, "prompts.0.sampling.top_k"),
    ("/v1/rollouts", {"prompts": [{"task": "math", "reference": REF, "prompt": "x", "n": "2"}]}, 422, "prompts.0.n"),
    ("/v1/rollouts", {"prompts": [{"task": "code", "reference": REF, "prompt": "x"}]}, 422, "prompts.0.reference"),
    ("/v1/weights", {"version": 5, "url": "http://127.0.0.1:1/x",
                     "broadcast": {"host": "127.0.0.1", "port": 1, "rank": 1, "world_size": 2}}, 422, "url"),
    ("/v1/weights", {"version": "5", "url": "http://127.0.0.1:1/x"}, 422, "version"),
    ("/v1/weights", {"version": 5}, 422, "url"),
    ("/v1/weights", {"version": 0, "url": "http://127.0.0.1:1/x"}, 409, "version"),
])
def test_bad_input_names_the_field(base_url: str, path: str, body: dict, status: int, field: str) -> None:
    resp = httpx.post(f"{base_url}{path}", json=body)
    assert resp.status_code == status, resp.text
    assert field in field_of(resp)


def field_of(resp: httpx.Response) -> str:
    """The field a refusal names: `field` on the native routes, `error.param` on the OpenAI ones."""
    body = resp.json()
    return body["error"]["param"] if "error" in body else body["field"]


def test_a_refused_prompt_accepts_none_of_its_request(base_url: str) -> None:
    ok = {"task": "math", "reference": REF, "prompt": "1 + 1"}
    bad = {"task": "math", "reference": REF, "prompt_token_ids": [5, 10**9]}
    before = httpx.get(f"{base_url}/healthz").json()["rollouts"]
    resp = httpx.post(f"{base_url}/v1/rollouts", json={"prompts": [ok, ok, bad]})
    assert resp.status_code == 400 and resp.json()["field"] == "prompts.2.prompt"
    after = httpx.get(f"{base_url}/healthz").json()["rollouts"]
    # The first two were not queued either (a client resubmitting the request would double them).
    assert (after["active"], after["written"]) == (before["active"], before["written"])


def test_still_serving_after_hostile_input_and_big_bodies_refused(base_url: str, redis_client: redis.Redis) -> None:
    big = b'{"prompts": [{"task": "math", "prompt": "' + b"x" * (9 << 20) + b'"}]}'
    resp = httpx.post(f"{base_url}/v1/rollouts", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    surrogate = json.dumps({"prompts": [{"task": "math", "reference": {"kind": "math", "answer": "\ud800"},
                                         "prompt": "x"}]})
    resp = httpx.post(f"{base_url}/v1/rollouts", content=surrogate, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and field_of(resp) == "prompts.0.reference.answer"
    nan = b'{"model": "ringrl-policy", "prompt": "x", "temperature": NaN}'
    resp = httpx.post(f"{base_url}/v1/completions", content=nan, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "temperature" in field_of(resp)
    health = httpx.get(f"{base_url}/healthz").json()
    assert health["ok"] and all(loop["restarts"] == 0 for loop in health["rollouts"]["loops"].values())
    resp = httpx.post(f"{base_url}/v1/rollouts", json={"prompts": [{"task": "math", "reference": REF,
                                                                     "prompt": "2 + 2"}]})
    assert resp.status_code == 202
    gid = resp.json()["group_ids"][0]
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if gid in {decode_group(f[FIELD]).group_id for _, f in redis_client.xrange(RunKeys(RUN).rollouts)}:
            break
        time.sleep(0.05)
    else:
        pytest.fail("a valid prompt after hostile ones never reached the stream")


def test_weights_by_url_then_state_and_metrics(base_url: str, model_dir, file_server) -> None:
    url = publish(file_server, model_dir("qwen3_moe", 1), "srv-v1.safetensors")
    before = httpx.get(f"{base_url}/v1/weights").json()
    resp = httpx.post(f"{base_url}/v1/weights", json={"version": before["version"] + 1, "url": url},
                      timeout=120)
    assert resp.status_code == 200, resp.text
    state = httpx.get(f"{base_url}/v1/weights").json()
    assert state["version"] == before["version"] + 1 and len(state["checksum"]) == 64
    metrics = httpx.get(f"{base_url}/metrics").text
    for name in ("ringrl_rollout_tokens_per_second", "ringrl_rollout_queue_wait_seconds",
                 "ringrl_rollout_requests_in_flight", "ringrl_rollout_policy_version",
                 "ringrl_rollout_weight_update_seconds", "ringrl_rollout_logprob_gap"):
        assert name in metrics
    assert f"ringrl_rollout_policy_version {state['version']}.0" in metrics
    assert httpx.get(f"{base_url}/healthz").json()["ok"] is True
    assert httpx.get(f"{base_url}/docs").status_code == 200
    assert "/v1/rollouts" in httpx.get(f"{base_url}/openapi.json").json()["paths"]
