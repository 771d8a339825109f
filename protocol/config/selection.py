"""Entropy-based choice of the SFT checkpoint RL starts from."""

from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class SelectionConfig(Section):
    entropy_lo: float = Field(default=0.15, ge=0, description="Lower edge of the target entropy band (nats/token).")
    entropy_hi: float = Field(default=0.45, ge=0, description="Upper edge of the target entropy band (nats/token).")
    probe_size: int = Field(default=64, gt=0, description="Probe prompts per task source sampled for entropy.")
    samples_per_prompt: int = Field(default=2, gt=0, description="Samples (T=1) per probe prompt.")
    eval_size: int = Field(default=100, ge=0, description="Held-out items per source for greedy accuracy (0: skip).")
    max_new_tokens: int = Field(default=64, gt=0, description="Longest sampled response, in tokens.")
    batch_size: int = Field(default=64, gt=0, description="Prompts decoded together.")
    seed: int = Field(default=0, description="Sampling seed (equal seeds, equal samples).")
