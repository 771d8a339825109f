"""A stage's held-out items: the full set measured before and after it, and the fixed subset its
in-stage curve measures every `eval_every` steps, and the row a curve point is logged as. Shared by
the embedded runner and the services driver, so both modes measure and log the same way."""

from __future__ import annotations

from typing import Any

from protocol.config.train import StageConfig, TrainConfig, stage_kind
from recipe.tasks import TaskItem, build_tasks


def held_out_items(cfg: TrainConfig, stage: StageConfig) -> list[TaskItem]:
    tasks = cfg.tasks.model_copy(update={"sources": stage.sources, "held_out_size": cfg.eval_size})
    return build_tasks(tasks, "held_out", stage_kind(stage))


def curve_items(cfg: TrainConfig, stage: StageConfig) -> list[TaskItem]:
    """eval_curve_items of the held-out items, spread over all the stage's sources (they come
    source by source); none when eval_every is 0."""
    if not cfg.eval_every:
        return []
    every = held_out_items(cfg, stage)
    return every[::max(1, len(every) // cfg.eval_curve_items)][:cfg.eval_curve_items]


def curve_row(stage: str, step: int, stage_step: int, version: int, greedy: float,
              sampled: float | None) -> dict[str, Any]:
    """One curve point as a metrics row, under the keys the plots read (no sampled key when the
    curve is greedy only)."""
    return {"step": step, "stage": stage, "stage_step": stage_step, "accuracy_curve": greedy,
            **({"accuracy_curve_sampled": sampled} if sampled is not None else {}), "curve_version": version}
