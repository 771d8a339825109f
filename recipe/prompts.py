"""A stage's prompts: its train items (plus replay of earlier stages'), drawn in shuffled epochs
with ids that say which draw they are — or, with a pass-rate feed, weighted away from items whose
recent groups taught nothing. Shared by the embedded runner and the services driver."""

from __future__ import annotations

import itertools
import random
import threading
from collections import deque
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


class PassRates:
    """The last `window` group outcomes (mean reward) of each item, fed back from the learner.

    A group whose responses all scored the same (all correct or all wrong) has no advantage and is
    filtered: an item whose recent groups all did so is drawn `floor` times as often as the others,
    never less, so no item is starved and one the policy starts to get partly right comes back.
    Thread-safe: the learner's outcomes arrive on another thread than the draws.
    """

    def __init__(self, window: int, floor: float) -> None:
        self.window, self.floor = window, floor
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def record(self, prompt_id: str, mean_reward: float) -> None:
        item = prompt_id.split("#", 1)[0]  # prompt ids are "<item id>#<draw>"
        with self._lock:
            self._recent.setdefault(item, deque(maxlen=self.window)).append(mean_reward)

    def weight(self, item_id: str) -> float:
        with self._lock:
            recent = self._recent.get(item_id)
            return self.floor if recent and all(r in (0.0, 1.0) for r in recent) else 1.0


def _weighted(items: list[TaskItem], rng: random.Random, rates: PassRates) -> Iterator[tuple[str, TaskItem]]:
    for draw in itertools.count():
        (it,) = rng.choices(items, weights=[rates.weight(i.id) for i in items])
        yield f"{it.id}#w{draw}", it


def prompt_stream(items: list[TaskItem], stage: StageConfig, seed: int,
                  replay: list[TaskItem] | None = None, rates: PassRates | None = None) -> Iterator[dict[str, Any]]:
    """The stage's train prompts, a `replay_share` of them drawn from `replay` instead; with
    `rates`, the stage's own items are drawn by their pass-rate weight instead of in epochs."""
    rng = random.Random(seed)
    own = _epochs(items, rng, "") if rates is None else _weighted(items, rng, rates)
    old = _epochs(replay, random.Random(seed + 1), "r") if replay else None
    while True:
        prompt_id, it = next(old) if old is not None and rng.random() < stage.replay_share else next(own)
        yield {"prompt_id": prompt_id, "task": it.task.value, "prompt": it.prompt,
               "reference": it.reference.model_dump(), "stage": stage.name}
