"""A weight update while responses are generating: each response's version is honest."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from protocol.schema import FinishReason, Group, MathReference, Response, TaskKind
from rollout_service.engine import Engine, Piece, Sampling
from rollout_service.partial import Segment, continued_params, join, stop_across
from tests.rollout.conftest import engine_config

LONG = Sampling(max_tokens=48)
CONTINUED = 96
"""max_tokens of the responses a weight update interrupts: long enough to be running at the update."""


def teacher_forced(engine: Engine, prompt: list[int], r: Response) -> np.ndarray:
    return engine.prompt_logprobs(prompt + r.token_ids.tolist())[len(prompt) - 1:]


@pytest.mark.parametrize("policy", ["finish", "abort"])
def test_update_during_generation(policy: str, model_dir) -> None:
    old, new = model_dir("qwen3_moe", 0), model_dir("qwen3_moe", 1)
    named = sorted(load_file(str(new / "model.safetensors")).items())
    with Engine(str(old), engine_config(inflight_policy=policy)) as e:
        prompt = e.encode("What is 3 + 4 - 2?")
        running = [e.submit(prompt, 2, LONG) for _ in range(3)]  # queued before the update
        e.update_weights(lambda: iter(named), version=1)
        later = e.submit(prompt, 2, LONG).result()
        before = [r for f in running for r in f.result()]
        expected = 0 if policy == "finish" else 1
        assert [r.policy_version for r in before] == [expected] * 6
        assert [r.policy_version for r in later] == [1, 1]
        assert e.metrics.resubmitted._value.get() == (0 if policy == "finish" else 6)
        # Honest: the recorded behaviour log-probs are the claimed version's. The engine now
        # runs version 1: version-1 responses match it, version-0 ones do not.
        for r in before + later:
            gap = np.abs(teacher_forced(e, prompt, r) - r.logprobs).max()
            if r.policy_version == 1:
                assert gap <= 1e-4
            else:
                assert gap > 1e-2


def _interrupted(e: Engine, prompt: list[int], version: int, weights: list, sampling: Sampling,
                 n: int = 4) -> list[Response]:
    """n responses under way when a weight update to `version` arrives."""
    running = e.submit(prompt, n, sampling)
    # a short request sharing their batch: when it is done, each of them has sampled 7+ tokens
    e.generate(prompt, 1, Sampling(max_tokens=8))
    e.update_weights(lambda: iter(weights), version=version)
    return running.result(timeout=300)


def test_continue_keeps_the_prefix_and_labels_each_token(model_dir) -> None:
    """inflight_policy=continue: a response running at an update keeps its tokens and goes on under
    the new weights; each token's behaviour log-prob is the log-prob of the version it is labelled
    with, given the tokens before it."""
    old, new = model_dir("qwen3_moe", 0), model_dir("qwen3_moe", 1)
    weights = {v: sorted(load_file(str(m / "model.safetensors")).items()) for v, m in [(0, old), (1, new)]}
    with Engine(str(old), engine_config(inflight_policy="continue")) as e:
        prompt = e.encode("Count from one to a hundred:")
        rs = _interrupted(e, prompt, 1, weights[1], Sampling(max_tokens=CONTINUED))
        assert e.metrics.resubmitted._value.get() == 4
        continued = [r for r in rs if len(r.token_versions) == 2]
        assert continued, [r.token_versions for r in rs]  # at least one ran past the update
        for r in rs:
            assert len(r.token_ids) == len(r.logprobs) <= CONTINUED
            # the tokens left after the update were granted: only EOS ends a response early
            assert r.finish_reason == (FinishReason.length if len(r.token_ids) == CONTINUED else FinishReason.stop)
        for r in continued:
            (zero, v0), (cut, v1) = r.token_versions
            assert (zero, v0, v1) == (0, 0, 1) and 7 <= cut < len(r.token_ids)
            assert r.policy_version == 0 and r.newest_version == 1
        by_v1 = [teacher_forced(e, prompt, r) for r in rs]
        e.update_weights(lambda: iter(weights[0]), version=2)  # the old weights again, to check the rest
        by_v0 = [teacher_forced(e, prompt, r) for r in rs]
        for r, lp0, lp1 in zip(rs, by_v0, by_v1):
            mine = np.where(r.versions() == 0, lp0, lp1)
            np.testing.assert_allclose(r.logprobs, mine, atol=1e-4)
            other = np.where(r.versions() == 0, lp1, lp0)
            assert np.abs(r.logprobs - other).max() > 1e-2  # the labels matter: the versions differ
        group = Group(prompt_id="p", task=TaskKind.math, prompt_token_ids=prompt,
                      reference=MathReference(answer="1"), responses=rs)
        assert group.policy_version == 0 and len(group.responses) == 4


def test_continue_concatenates_routing(model_dir) -> None:
    """With rollout.record_routing, a continued response's routing covers prompt + response[:-1]:
    the old weights' rows for the positions that sampled its first segment, the new ones' after."""
    old, new = model_dir("qwen3_moe", 0), model_dir("qwen3_moe", 1)
    named = sorted(load_file(str(new / "model.safetensors")).items())
    with Engine(str(old), engine_config(inflight_policy="continue", record_routing=True)) as e:
        prompt = e.encode("Count from one to a hundred:")
        rs = _interrupted(e, prompt, 1, named, Sampling(max_tokens=CONTINUED))
        assert any(len(r.token_versions) == 2 for r in rs)
        for r in rs:
            assert r.routed_experts is not None
            assert len(r.routed_experts) == len(prompt) + len(r.token_ids) - 1
        # the same sequence forwarded afresh routes each segment's positions as its version's weights do
        r = next(r for r in rs if len(r.token_versions) == 2)
        edge = len(prompt) + r.token_versions[1][0] - 1  # the position that sampled the first new token

        def fresh() -> np.ndarray:
            seq = prompt + r.token_ids[:-1].tolist()
            return e.generate(seq, 1, Sampling(max_tokens=1))[0].routed_experts

        by_new = fresh()
        assert np.array_equal(r.routed_experts[edge:], by_new[edge:])
        assert not np.array_equal(r.routed_experts[:edge], by_new[:edge])
        e.update_weights(lambda: iter(sorted(load_file(str(old / "model.safetensors")).items())), version=2)
        assert np.array_equal(r.routed_experts[:edge], fresh()[:edge])
        Group(prompt_id="p", task=TaskKind.math, prompt_token_ids=prompt,
              reference=MathReference(answer="1"), responses=rs)  # the schema's row check


def test_stop_string_across_the_boundary(model_dir) -> None:
    """A stop string that began before an update and ended after it ends the response there, as
    it would have without the update."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir("qwen3_moe")))
    first, second = tok.encode("The answer is 42"), tok.encode(". Done and more text")
    segs = [Segment(first, [-1.0] * len(first), tok.decode(first), 0),
            Segment(second, [-2.0] * len(second), tok.decode(second), 1)]
    decode = tok.decode
    assert stop_across(segs, ["zzz"], decode) is None
    keep, chars = stop_across(segs, ["42. D"], decode)
    joined = "".join(s.text for s in segs)
    assert chars == joined.index("42. D")
    assert "42. D" in tok.decode(first + second[:keep - len(first)])
    assert "42. D" not in tok.decode(first + second[:keep - len(first) - 1])
    r = join(segs, FinishReason.length, 3, ["42. D"], decode)
    assert r.finish_reason == FinishReason.stop and r.text == joined[:chars] and len(r.token_ids) == keep
    assert r.token_versions == [(0, 0), (len(first), 1)] and r.logprobs[-1] == -2.0
    whole = join(segs, FinishReason.length, 3, ["zzz"], decode)
    assert whole.finish_reason == FinishReason.length and len(whole.token_ids) == len(first + second)


def test_continuation_keeps_the_settings_with_a_seed_of_its_own() -> None:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=100, temperature=0.7, top_p=0.9, stop=["\n\n"], seed=1234, logprobs=0)
    rest = continued_params(params, 30, 30)
    assert (rest.max_tokens, rest.temperature, rest.top_p, rest.stop, rest.logprobs) == (70, 0.7, 0.9, ["\n\n"], 0)
    assert rest.seed != 1234 and 0 <= rest.seed < 2**63
    assert continued_params(params, 30, 30).seed == rest.seed  # deterministic
    assert continued_params(params, 31, 31).seed != rest.seed  # another segment, other draws
    assert params.max_tokens == 100 and params.seed == 1234  # the original is left as it was
    assert continued_params(SamplingParams(max_tokens=10), 3, 3).seed is None


def test_streams_finish_on_their_weights_under_abort(model_dir) -> None:
    """inflight_policy=abort resamples training responses on the new weights, but a streamed
    response's tokens are already out: it finishes on the weights it started with, then the load.
    (Before any test of the module's engine: closing a second in-process engine while one runs is
    not something the tests do.)"""
    old, new = model_dir("qwen3_moe", 0), model_dir("qwen3_moe", 1)
    named = sorted(load_file(str(new / "model.safetensors")).items())
    with Engine(str(old), engine_config(inflight_policy="abort")) as e:
        prompt = e.encode("What is 3 + 4 - 2?")
        pieces: list[Piece] = []
        streamed = e.submit_pieces(prompt, 2, LONG, pieces.append, stream=True, logprobs=0)
        trained = e.submit(prompt, 2, LONG)
        e.update_weights(lambda: iter(named), version=1)
        streamed.result(timeout=60)
        assert [r.policy_version for r in trained.result()] == [1, 1]
        assert e.metrics.resubmitted._value.get() == 2  # the training responses only
        assert {p.version for p in pieces} == {0}
        for i in range(2):
            mine = [p for p in pieces if p.index == i]
            assert len(mine) > 1  # token by token
            assert [p.finish_reason is not None for p in mine] == [False] * (len(mine) - 1) + [True]
            ids = [t for p in mine for t in p.token_ids]
            assert len(ids) == sum(len(p.logprobs or []) for p in mine) <= 48


def test_versions_recorded_without_updates(engine: Engine) -> None:
    rs = engine.generate(engine.encode("def add(a, b):"), 3)
    assert len(rs) == 3
    for r in rs:
        assert r.policy_version == engine.version
        assert len(r.token_ids) == len(r.logprobs) > 0
        assert (r.logprobs <= 0).all()


def test_cancelled_pieces_leave_the_engine(engine: Engine) -> None:
    first = threading.Event()
    future = engine.submit_pieces(engine.encode("Count:"), 4, Sampling(max_tokens=400),
                                  lambda p: first.set(), stream=True)
    assert first.wait(60)
    future.cancel()
    end = time.monotonic() + 20
    while engine.in_flight and time.monotonic() < end:
        time.sleep(0.02)
    assert engine.in_flight == 0
    assert len(engine.generate(engine.encode("1 + 1 ="), 2, Sampling(max_tokens=4))) == 2  # still serving
