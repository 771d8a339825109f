"""Scored groups with random lengths and rewards, and a small tiny-MoE for learner tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protocol.schema import Group, MathReference, Response, TaskKind


def scored_groups(count: int, seed: int = 0, n: int = 4, vocab: int = 300, min_len: int = 1,
                  max_len: int = 40, prompt_len: tuple[int, int] = (3, 12), version: int = 0,
                  prefix: str = "g") -> list[Group]:
    """Groups with random response lengths, binary rewards (some all-equal) and behaviour log-probs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        responses = []
        for _ in range(n):
            length = int(rng.integers(min_len, max_len + 1))
            responses.append(Response(
                token_ids=rng.integers(2, vocab, length), logprobs=-rng.random(length) * 3 - 4,
                policy_version=version, reward=float(rng.integers(0, 2))))
        out.append(Group(group_id=f"{prefix}{seed}-{i}", prompt_id=f"p{i}", task=TaskKind.math,
                         prompt_token_ids=rng.integers(2, vocab, int(rng.integers(*prompt_len))),
                         reference=MathReference(answer="1"), responses=responses))
    return out


def tiny_moe(out_dir: Path, arch: str = "qwen3_moe", **overrides: object) -> Path:
    from learner.models.tiny import build_tiny_model

    kw = dict(hidden=64, layers=2, experts=4, top_k=2, expert_ffn=64)
    kw.update(overrides)
    return build_tiny_model(out_dir, arch, **kw)  # type: ignore[arg-type]
