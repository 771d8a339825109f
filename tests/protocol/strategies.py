"""Hypothesis strategies for groups, shared by protocol tests and others."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from protocol.schema import (
    CodeReference,
    FinishReason,
    Group,
    IOTest,
    MathReference,
    Response,
    TaskKind,
    Verdict,
    VerdictStatus,
)

text = st.text(max_size=40)
tokens = st.lists(st.integers(-2**31, 2**31 - 1), max_size=64)
floats32 = st.floats(width=32, allow_nan=False)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    toks = draw(tokens)
    lps = draw(st.lists(floats32, min_size=len(toks), max_size=len(toks)))
    scored = draw(st.booleans())
    oldest = draw(st.integers(0, 2**40))
    # a response continued across weight updates: later segments by newer versions
    starts = sorted(draw(st.sets(st.integers(1, max(len(toks) - 1, 1)), max_size=3))) if len(toks) > 1 else []
    steps = [draw(st.integers(1, 5)) for _ in starts]
    versions = [oldest + sum(steps[:i]) for i in range(len(starts) + 1)]
    return Response(
        token_ids=np.array(toks, dtype=np.int64), logprobs=lps, text=draw(text),
        finish_reason=draw(st.sampled_from(FinishReason)),
        policy_version=oldest, token_versions=list(zip([0, *starts], versions)),
        reward=draw(st.floats(allow_nan=False)) if scored else None,
        verdict=Verdict(status=draw(st.sampled_from(VerdictStatus)), detail=draw(text))
        if scored else None)


references = st.one_of(
    st.builds(MathReference, answer=text),
    st.builds(CodeReference,
              io_tests=st.lists(st.builds(IOTest, stdin=text, stdout=text), max_size=3),
              test_code=st.none() | text, entry_point=st.none() | text))


@st.composite
def routed(draw: st.DrawFn, response: Response, prompt_len: int) -> Response:
    """The response with routing for prompt + response[:-1] (uint8 or uint16 ids), or as it is."""
    if not draw(st.booleans()):
        return response
    rows = max(prompt_len + len(response.token_ids) - 1, 0)
    layers, k = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    top = draw(st.sampled_from([255, 65535]))
    ids = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, top + 1, (rows, layers, k))
    return response.model_copy(update={"routed_experts": ids.astype(np.uint8 if top == 255 else np.uint16)})


@st.composite
def groups(draw: st.DrawFn) -> Group:
    prompt = draw(tokens)
    return Group(
        group_id=draw(st.text(min_size=1, max_size=32)), prompt_id=draw(text),
        task=draw(st.sampled_from(TaskKind)), stage=draw(text), prompt_text=draw(text),
        prompt_token_ids=prompt, reference=draw(references),
        responses=[draw(routed(r, len(prompt))) for r in draw(st.lists(responses(), min_size=1, max_size=5))],
        created_at=draw(st.floats(0, 2e9)), finished_at=draw(st.none() | st.floats(0, 2e9)),
        scored_at=draw(st.none() | st.floats(0, 2e9)))


def make_group(n: int = 4, length: int = 16, seed: int = 0, group_id: str | None = None) -> Group:
    """A deterministic plain group for queue tests and benchmarks."""
    rng = np.random.default_rng(seed)
    kw = {"group_id": group_id} if group_id else {}
    return Group(
        prompt_id=f"p{seed}", task=TaskKind.math, stage="math", prompt_text="1+1=?",
        prompt_token_ids=rng.integers(0, 50_000, 32), reference=MathReference(answer="2"),
        responses=[Response(token_ids=rng.integers(0, 50_000, length),
                            logprobs=-rng.random(length, dtype=np.float32), text="\\boxed{2}",
                            policy_version=3) for _ in range(n)], **kw)
