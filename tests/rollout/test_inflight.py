"""A weight update while responses are generating: each response's version is honest."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from protocol.schema import Response
from rollout_service.engine import Engine, Piece, Sampling
from tests.rollout.conftest import engine_config

LONG = Sampling(max_tokens=48)


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
