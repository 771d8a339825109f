"""The model a run starts from: a Hugging Face folder, or the tiny MoE built locally."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.config.base import Section

Arch = Literal["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "qwen3", "qwen2"]
"""Architectures the tiny-model builder (learner/models/tiny.py) knows."""


class ModelSection(Section):
    path: str = Field(default="", description="Hugging Face folder to start from; empty: build the tiny MoE.")
    arch: Arch = Field(default="qwen3_moe", description="Architecture of the tiny model built when path is empty.")
    hidden: int = Field(default=128, gt=0, description="Hidden size of the tiny model.")
    layers: int = Field(default=4, gt=0, description="Decoder layers of the tiny model.")
    experts: int = Field(default=8, gt=0, description="Routed experts per MoE layer of the tiny model.")
    top_k: int = Field(default=2, gt=0, description="Experts per token of the tiny model.")
    expert_ffn: int = Field(default=192, gt=0, description="Expert FFN width of the tiny model.")
    vocab_size: int = Field(default=640, gt=2, description="BPE vocabulary asked of the local tokenizer.")
