"""A stage's prompts: its train items (plus replay of earlier stages'), drawn in shuffled epochs
with ids that say which draw they are. Shared by the embedded runner and the services driver."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

from protocol.config.train import StageConfig, TrainConfig, stage_kind
from recipe.tasks import TaskItem, build_tasks


def stage_items(cfg: TrainConfig, stage: StageConfig) -> tuple[list[TaskItem], list[TaskItem]]:
    """The stage's train items, then its replay items (built-in sources only)."""
    # A JSONL file may hold both kinds; a stage trains on its own kind only.
    items = build_tasks(cfg.tasks.model_copy(update={"sources": stage.sources}), "train", stage_kind(stage))
    replay = build_tasks(cfg.tasks.model_copy(update={"sources": stage.replay_sources, "train_files": []}),
                         "train") if stage.replay_sources else []
    return items, replay


def _epochs(items: list[TaskItem], rng: random.Random, tag: str) -> Iterator[tuple[str, TaskItem]]:
    """Items in a fresh shuffled order each epoch, forever, each draw with its own id."""
    for epoch in itertools.count():
        order = items[:]
        rng.shuffle(order)
        for pos, it in enumerate(order):
            yield f"{it.id}#{tag}{epoch}.{pos}", it


def prompt_stream(items: list[TaskItem], stage: StageConfig, seed: int,
                  replay: list[TaskItem] | None = None) -> Iterator[dict[str, Any]]:
    """The stage's train prompts, a `replay_share` of them drawn from `replay` instead."""
    rng = random.Random(seed)
    own = _epochs(items, rng, "")
    old = _epochs(replay, random.Random(seed + 1), "r") if replay else None
    while True:
        prompt_id, it = next(old) if old is not None and rng.random() < stage.replay_share else next(own)
        yield {"prompt_id": prompt_id, "task": it.task.value, "prompt": it.prompt,
               "reference": it.reference.model_dump(), "stage": stage.name}
