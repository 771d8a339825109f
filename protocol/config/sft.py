"""Settings of distillation (SFT); kept apart from learner/sft.py so configs load without torch."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Literal

from pydantic import Field

from protocol.config.base import Section


class SFTConfig(Section):
    init_model: str = Field(
        default="", description="Hugging Face folder to start from; empty: `ringrl sft` builds the tiny MoE.")
    output_dir: str = Field(default="runs/default/sft", description="Checkpoints go to OUTPUT_DIR/step-NNNNNN.")
    batch_size: int = Field(default=64, gt=0, description="Sequences per optimiser step.")
    lr: float = Field(default=3e-3, gt=0, description="Peak AdamW learning rate (constant after warm-up).")
    warmup_steps: int = Field(default=100, ge=0, description="Linear learning-rate warm-up from 0.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW decoupled weight decay.")
    grad_clip: float = Field(default=1.0, gt=0, description="Clip the global gradient norm to this.")
    max_steps: int = Field(default=0, ge=0, description="Stop after this many steps (0: no step limit).")
    max_minutes: float = Field(
        default=6.0, ge=0, description="Stop after this much training time (0: no time limit).")
    save_steps: list[int] = Field(default_factory=list, description="Also save at these step numbers.")
    save_every_steps: int = Field(
        default=0, ge=0, description="Save a checkpoint every this many steps (0: never); with max_steps, "
                                     "the checkpoints do not depend on the machine's speed.")
    save_every_minutes: float = Field(
        default=1.0, ge=0, description="Save a checkpoint every this much training time (0: never).")
    dtype: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: autocast forward/backward in bfloat16, fp32 master weights.")
    max_length: int = Field(default=256, gt=8, description="Longer examples are cut to this many tokens.")
    bucket_batches: int = Field(
        default=32, gt=0,
        description="Length bucketing: each window of this many batches is sorted by length before batching.")
    log_every_steps: int = Field(default=50, gt=0, description="One summary line every this many steps.")
    experts_implementation: Literal["eager", "grouped_mm", "batched_mm"] = Field(
        default="eager",
        description="transformers MoE experts kernel; eager is fastest on CPU for tiny models (STACK-NOTES).")
    threads: int = Field(
        default=2, ge=0,
        description="torch intra-op threads during SFT; fixed, because without KERNEL_ENV's MKL STRICT mode the "
                    "thread count changes the checkpoint bits (README); 0: torch's default, the core count.")
    seed: int = Field(default=0, description="Seed for data order and dropout.")


KERNEL_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
"""CPU kernel choices that change SFT checkpoint bits (measured: README, reproducibility): ATen's
and MKL's AVX2 code paths, which every x86-64 machine of this kind has; MKL's STRICT mode also makes
its results independent of the thread count. torch reads ATEN_CPU_CAPABILITY at its first CPU op
(not at import) and MKL reads MKL_CBWR at its first call, so they only take effect when set in the
shell or by `pin_kernels()` before the process runs any torch op. The oneDNN ISA and
torch.use_deterministic_algorithms made no difference to fp32 SFT on CPU, so they are left alone."""


def pin_kernels(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set KERNEL_ENV where the environment does not already choose; returns the values in force.
    Call it first thing in a process (an entry point), before anything imports and uses torch."""
    for key, value in KERNEL_ENV.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in KERNEL_ENV}
