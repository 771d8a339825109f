"""Partial rollouts: a response interrupted by a weight update goes on under the new weights.

`inflight_policy: continue` stops an in-flight response between engine steps, keeps the tokens it
has (a `Segment`: what one weight version sampled), and re-adds it as a new engine request whose
prompt is the original prompt + those tokens, with the max_tokens left. The new request computes
the whole prefix again under the new weights, so every later token is sampled from — and its
behaviour log-prob is exactly — the new version's distribution given the prefix.

Why not vLLM 0.32's `pause_generation(mode="keep")` (or `pause_scheduler("keep")` on the in-process
core): it keeps each request's KV cache, computed by the old weights. Tokens sampled after the
load would then come from neither version's distribution (new weights attending to old keys and
values), so no per-token version label would make their behaviour log-probs honest. Re-adding the
request throws the old KV away (the prefix cache is reset at the load) at the cost of one prefill
of prompt + prefix per continued response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from protocol.schema import FinishReason, Response

CONTEXT_TOKENS = 4
"""Tokens before a segment decoded with it to measure its text: enough for a word's leading space
and a split multi-byte character."""


@dataclass
class Segment:
    """The tokens one weight version sampled for a response, with their log-probs and text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    version: int
    routing: np.ndarray | None = None
    """Routed experts of the positions whose forward sampled these tokens (`rollout.record_routing`)."""


def so_far(llm_engine: object, request_id: str) -> Segment:
    """What an in-flight request has sampled, read from vLLM's output processor (the only place a
    FINAL_ONLY request's partial output lives); `version` is left 0 for the caller to set."""
    processor = llm_engine.output_processor  # type: ignore[attr-defined]
    internal = processor.external_req_ids.get(request_id) or []
    if len(internal) != 1:
        raise RuntimeError(f"request {request_id}: {len(internal)} engine requests, expected 1 (n=1)")
    state = processor.request_states[internal[0]]
    ids = [int(t) for t in state.detokenizer.output_token_ids]
    positions = state.logprobs_processor.logprobs or []
    if len(positions) != len(ids):
        raise RuntimeError(f"request {request_id}: {len(ids)} tokens but {len(positions)} log-probs")
    return Segment(ids, [float(d[t].logprob) for d, t in zip(positions, ids)],
                   state.detokenizer.output_text, 0)


def continuation_seed(seed: int | None, start: int) -> int | None:
    """The seed of a response's segment starting at token `start`: the same seed again would replay
    the random draws that sampled the tokens before it."""
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}:{start}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # vLLM's generator takes a signed 64-bit seed


def continued_params(params: object, done: int, start: int) -> object:
    """vLLM SamplingParams for the rest of a response that has `done` tokens (from token `start`
    on, under these params): the same settings, the tokens left, a seed of its own."""
    rest = params.clone()  # type: ignore[attr-defined]
    rest.max_tokens = params.max_tokens - done  # type: ignore[attr-defined]
    rest.seed = continuation_seed(params.seed, start)  # type: ignore[attr-defined]
    return rest


def stop_across(segments: Sequence[Segment], stop: Sequence[str],
                decode: Callable[[list[int]], str]) -> tuple[int, int] | None:
    """(tokens, characters) to keep when a stop string spans a segment boundary, else None.

    vLLM checks stop strings in the text a request generates, never in its prompt, so one that
    began in a segment before an update and ended after it went unseen. Any occurrence in the
    joined text is such a one: vLLM stopped each segment at one wholly inside it and cut it from the
    text. The earliest-ending occurrence wins, as vLLM's own check does; the response keeps the
    tokens up to the one completing it and the text before it."""
    text = "".join(s.text for s in segments)
    best: tuple[int, int] | None = None  # (end, start)
    for s in stop:
        at = text.find(s)
        if at >= 0 and (best is None or at + len(s) < best[0]):
            best = (at + len(s), at)
    if best is None:
        return None
    end, start = best
    ids = [t for s in segments for t in s.token_ids]
    offset = before = 0
    for seg in segments:
        if end <= offset + len(seg.text):
            context = ids[max(before - CONTEXT_TOKENS, 0):before]
            base = len(decode(context))
            for k in range(1, len(seg.token_ids) + 1):
                if len(decode(context + seg.token_ids[:k])) - base >= end - offset:
                    return before + k, start
            return before + len(seg.token_ids), start
        offset += len(seg.text)
        before += len(seg.token_ids)
    return None


def join(segments: Sequence[Segment], finish_reason: FinishReason, prompt_len: int,
         stop: Sequence[str] = (), decode: Callable[[list[int]], str] | None = None) -> Response:
    """One Response from a response's segments, in order: tokens, log-probs, text and routing
    concatenated, each token's version in `token_versions`."""
    ids = [t for s in segments for t in s.token_ids]
    lps = [lp for s in segments for lp in s.logprobs]
    text = "".join(s.text for s in segments)
    cut = stop_across(segments, stop, decode) if len(segments) > 1 and stop and decode else None
    if cut is not None:
        keep, chars = cut
        ids, lps, text, finish_reason = ids[:keep], lps[:keep], text[:chars], FinishReason.stop
    versions: list[tuple[int, int]] = []
    start = 0
    for s in segments:
        if s.token_ids and start < len(ids) and (not versions or versions[-1][1] != s.version):
            versions.append((start, s.version))
        start += len(s.token_ids)
    if not versions:  # no tokens at all: the version that ran it
        versions = [(0, segments[-1].version)]
    routing = None
    if segments[0].routing is not None:
        rows = np.concatenate([s.routing for s in segments if s.routing is not None])
        routing = rows[:max(prompt_len + len(ids) - 1, 0)]
    return Response(token_ids=np.asarray(ids, dtype=np.int32), logprobs=np.asarray(lps, dtype=np.float32),
                    text=text, finish_reason=finish_reason, policy_version=min(v for _, v in versions),
                    token_versions=versions, routed_experts=routing)
