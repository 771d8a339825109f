"""Task data: which built-in generators, how many items, which user files."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.config.base import Section
from protocol.schema import TaskKind

Source = Literal["chain_sum", "leg_counting", "legs_fn", "linear_fn"]
SOURCES: tuple[Source, ...] = ("chain_sum", "leg_counting", "legs_fn", "linear_fn")
TASK_OF: dict[Source, TaskKind] = {"chain_sum": TaskKind.math, "leg_counting": TaskKind.math,
                                   "legs_fn": TaskKind.code, "linear_fn": TaskKind.code}


class TasksConfig(Section):
    sources: list[Source] = Field(
        default_factory=lambda: ["chain_sum", "leg_counting", "legs_fn"],
        description="Built-in generators to draw from (chain_sum, leg_counting: math; legs_fn, linear_fn: code).")
    train_size: int = Field(
        default=3000, ge=0,
        description="Train items per built-in source, drawn as the generator yields them (repeats kept, "
                    "so train has the same difficulty mix as held-out).")
    held_out_size: int = Field(
        default=100, ge=0,
        description="Held-out items per built-in source, drawn like train's (repeats kept).")
    held_out_fraction: float = Field(
        default=0.25, gt=0, lt=1,
        description="Share of each source's content space reserved for held-out (by content hash).")
    seed: int = Field(default=0, description="Seed of the generators; equal seeds give equal items.")
    train_files: list[str] = Field(
        default_factory=list, description="User JSONL files added to the train split (docs/data.md).")
    held_out_files: list[str] = Field(
        default_factory=list,
        description="User JSONL files added to the held-out split; train items equal to one are dropped.")
