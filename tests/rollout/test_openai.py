"""The OpenAI surface through the official `openai` client over real HTTP: /v1/models, streamed
completions (token by token, usage, log-probs), OpenAI-shaped refusals, fields refused by name."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator

import httpx
import openai
import pytest

from protocol.auth import Tokens
from rollout_service.engine import Engine
from rollout_service.server import create_app
from tests.conftest import serving

MODEL = "ringrl-policy"


@pytest.fixture(scope="module")
def base_url(engine: Engine) -> Iterator[str]:
    with serving(create_app(engine)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_models_list_and_retrieve(client: openai.OpenAI, engine: Engine) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, engine.model_path]
    assert all(m.object == "model" and m.owned_by == "ringrl" for m in models.data)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-9")
    assert err.value.code == "model_not_found"


def test_stream_token_by_token_equals_the_whole(client: openai.OpenAI) -> None:
    args = dict(model=MODEL, prompt=["What is 3 + 4?", "2 + 2 ="], max_tokens=12, n=2, temperature=0.0,
                stop=["in", "\n\n"])  # a stop string is held back in the stream until it cannot be one
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    texts, count, finish = defaultdict(str), defaultdict(int), {}
    for c in chunks[:-1]:
        assert len(c.choices) == 1 and c.usage is None
        choice = c.choices[0]
        assert choice.index not in finish, "a chunk after the choice's last one"
        texts[choice.index] += choice.text
        count[choice.index] += 1
        if choice.finish_reason is not None:
            finish[choice.index] = choice.finish_reason
    assert sorted(finish) == [0, 1, 2, 3]
    # Token by token: greedy choices that run to max_tokens came in more than one piece.
    assert all(count[c.index] > 1 for c in whole.choices if c.finish_reason == "length")
    assert [texts[c.index] for c in whole.choices] == [c.text for c in whole.choices]
    assert [finish[c.index] for c in whole.choices] == [c.finish_reason for c in whole.choices]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == whole.usage.model_dump()


def test_stream_with_logprobs(client: openai.OpenAI) -> None:
    tokens: list[str] = []
    for c in client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=6, logprobs=2,
                                       stream=True):
        lp = c.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        for token, x, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            assert x <= 0 and token in top and len(top) <= 3  # the 2 likeliest and the sampled one
        tokens += lp.tokens
    assert 0 < len(tokens) <= 6


def test_no_op_values_of_unhonoured_fields_are_accepted(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=2, echo=False, best_of=1,
                                    presence_penalty=0, frequency_penalty=0.0, logit_bias={})
    assert len(out.choices) == 1


@pytest.mark.parametrize("kwargs,param,code", [
    (dict(echo=True), "echo", "unsupported_parameter"),
    (dict(best_of=3), "best_of", "unsupported_parameter"),
    (dict(suffix="!"), "suffix", "unsupported_parameter"),
    (dict(logit_bias={"5": 10}), "logit_bias", "unsupported_parameter"),
    (dict(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    (dict(frequency_penalty=-1), "frequency_penalty", "unsupported_parameter"),
    (dict(user="u-1"), "user", "unsupported_parameter"),
    (dict(extra_body={"top_k": 5}), "top_k", "unknown_parameter"),
    (dict(temperature=2.5), "temperature", "invalid_value"),
    (dict(top_p=0), "top_p", "invalid_value"),
    (dict(n=10**6), "n", "invalid_value"),
    (dict(max_tokens=9999), "max_tokens", "context_length_exceeded"),
    (dict(logprobs=6), "logprobs", "invalid_value"),
    (dict(seed=-1), "seed", "invalid_value"),
    (dict(stop=["a"] * 17), "stop", "invalid_value"),
    (dict(stream=True, temperature=9), "temperature", "invalid_value"),  # refused before streaming
    (dict(extra_body={"stream_options": {"include_usage": True, "x": 1}}), "stream_options.x",
     "unknown_parameter"),
])
def test_refusals_through_the_client(client: openai.OpenAI, kwargs: dict, param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**{"model": MODEL, "prompt": "x", "max_tokens": 2, **kwargs})
    assert (err.value.param, err.value.code, err.value.type) == (param, code, "invalid_request_error")
    assert param.split(".")[0] in err.value.message


@pytest.mark.parametrize("body,status,param", [
    ({"model": MODEL, "prompt": "\ud800"}, 400, "prompt"),  # not valid Unicode
    ({"model": MODEL, "prompt": ["ok", ""]}, 400, "prompt.1"),
    ({"model": MODEL, "prompt": [[5, -1]]}, 400, "prompt.0.1"),
    ({"model": MODEL, "prompt": [5, 10**9]}, 400, "prompt"),  # outside the vocabulary
    ({"model": MODEL, "prompt": "x", "n": "2"}, 400, "n"),  # JSON types as the schema says
    ({"model": MODEL, "prompt": "x", "stream": 1}, 400, "stream"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": "gpt-9", "prompt": "x"}, 404, "model"),
])
def test_refusals_are_openai_shaped(base_url: str, body: dict, status: int, param: str) -> None:
    resp = httpx.post(f"{base_url}/v1/completions", content=json.dumps(body),
                      headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_integral_floats_count_as_integers(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=2.0, n=2.0)  # type: ignore[arg-type]
    assert len(out.choices) == 2


def test_body_errors_take_the_shape_of_their_surface(base_url: str, engine: Engine) -> None:
    big = b'{"prompt": "' + b"x" * (engine.config.max_request_bytes + 1) + b'"}'
    headers = {"content-type": "application/json"}
    openai_413 = httpx.post(f"{base_url}/v1/completions", content=big, headers=headers)
    assert openai_413.status_code == 413 and openai_413.json()["error"]["code"] == "request_too_large"
    native_413 = httpx.post(f"{base_url}/v1/rollouts", content=big, headers=headers)
    assert native_413.status_code == 413 and native_413.json()["field"] == "body"
    broken = httpx.post(f"{base_url}/v1/completions", content=b"{" * 10_000, headers=headers)
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "body"
    wrong = httpx.put(f"{base_url}/v1/weights")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"
    assert wrong.json() == {"detail": "method: Method Not Allowed", "field": "method"}


def test_a_client_gone_mid_stream_stops_its_responses(base_url: str, engine: Engine) -> None:
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": 400, "n": 4, "stream": True,
            "temperature": 1.0}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        first = next(resp.iter_lines())
        assert first.startswith("data: {")
    end = time.monotonic() + 20
    while engine.in_flight and time.monotonic() < end:
        time.sleep(0.05)
    assert engine.in_flight == 0


def test_openapi_states_the_openai_surface(base_url: str, engine: Engine) -> None:
    spec = httpx.get(f"{base_url}/openapi.json").json()
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert "text/event-stream" in completions["200"]["content"]
    assert "422" not in completions  # OpenAI answers malformed requests with 400
    assert completions["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    request = spec["components"]["schemas"]["CompletionRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["model"]["enum"] == [MODEL, engine.model_path]
    assert request["properties"]["temperature"]["anyOf"][0]["maximum"] == 2


def test_token_refusals_take_the_shape_of_their_surface(engine: Engine) -> None:
    with serving(create_app(engine, tokens=Tokens(api="api-token", admin="admin-token"))) as url:
        stranger = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            stranger.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert (err.value.param, err.value.code) == ("authorization", "invalid_api_key")
        bare = httpx.get(f"{url}/v1/models")
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
        assert bare.json()["error"]["param"] == "authorization"
        native = httpx.post(f"{url}/v1/rollouts", json={"prompts": []})
        assert native.status_code == 401 and native.json()["field"] == "authorization"
        friend = openai.OpenAI(base_url=f"{url}/v1", api_key="api-token", max_retries=0)
        assert len(friend.completions.create(model=MODEL, prompt="x", max_tokens=2).choices) == 1
