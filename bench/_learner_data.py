"""Shared by the learner benches: a tiny MoE and a stream of scored groups with RL-like lengths.

No sampling here: responses are random tokens with heavy-tailed lengths (most short, some near
the limit, as reasoning RL produces) and random binary rewards. What the benches measure (token
counts, gradient scale, step time, packing) depends on lengths and rewards, not on token content.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from learner.models.tiny import build_tiny_model
from protocol.schema import Group, MathReference, Response, TaskKind


def tiny_model() -> Path:
    return build_tiny_model(Path(tempfile.mkdtemp(prefix="ringrl-bench-")) / "m", "qwen3_moe",
                            hidden=64, layers=2, experts=4, top_k=2, expert_ffn=64)


def stream(count: int, seed: int = 0, n: int = 8, max_len: int = 384, vocab: int = 300) -> list[Group]:
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(count):
        lengths = np.clip(rng.lognormal(4.0, 0.9, n), 4, max_len).astype(int)
        p = rng.uniform(0.1, 0.9)
        responses = [Response(token_ids=rng.integers(2, vocab, L), logprobs=-rng.random(L) - 5.0,
                              policy_version=0, reward=float(rng.random() < p)) for L in lengths]
        groups.append(Group(group_id=f"b{seed}-{i}", prompt_id=str(i), task=TaskKind.math,
                            prompt_token_ids=rng.integers(2, vocab, int(rng.integers(16, 48))),
                            reference=MathReference(answer="0"), responses=responses))
    return groups
