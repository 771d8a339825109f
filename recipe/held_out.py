"""A stage's held-out items: the full set measured before and after it, and the fixed subset its
in-stage curve measures every `eval_every` steps. Shared by the embedded runner and the services
driver, so both modes measure the same items."""

from __future__ import annotations

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
