"""Train and held-out task sets from the built-in generators and user JSONL files."""

from __future__ import annotations

from itertools import islice
from typing import Literal

from protocol.config.tasks import TasksConfig
from protocol.schema import TaskKind
from recipe.tasks.generators import GENERATORS, TASK_OF, Source
from recipe.tasks.items import TaskItem
from recipe.tasks.jsonl import load_jsonl
from recipe.tasks.splits import is_held_out

Split = Literal["train", "held_out"]

# A source with no items on one side of the split stops after this many draws per wanted item
# instead of looping forever.
_DRAWS_PER_ITEM = 30


def generate(source: Source, split: Split, size: int, seed: int, held_out_fraction: float) -> list[TaskItem]:
    """The first `size` items of one source's stream on one side of the content-hash split.

    Repeats are kept: deduplicating would use up a source's small easy corner (two-term sums,
    one-animal counts) within the first few hundred draws and leave a large split mostly hard
    items, while a small one keeps the generator's mix. Drawn alike, both splits keep that mix.
    """
    want_held_out = split == "held_out"
    items: list[TaskItem] = []
    for item in islice(GENERATORS[source](seed), _DRAWS_PER_ITEM * size + 1000):
        if len(items) >= size:
            break
        if is_held_out(source, item.question, held_out_fraction) == want_held_out:
            items.append(item)
    return items


def build_tasks(cfg: TasksConfig, split: Split, task: TaskKind | None = None) -> list[TaskItem]:
    """Items of one split (optionally one task kind); deterministic for a given config."""
    size = cfg.train_size if split == "train" else cfg.held_out_size
    items: list[TaskItem] = []
    for source in cfg.sources:
        if task is None or TASK_OF[source] == task:
            items += generate(source, split, size, cfg.seed, cfg.held_out_fraction)
    for path in cfg.train_files if split == "train" else cfg.held_out_files:
        items += [it for it in load_jsonl(path) if task is None or it.task == task]
    if split == "train" and cfg.held_out_files:
        held = {it.id for path in cfg.held_out_files for it in load_jsonl(path)}
        items = [it for it in items if it.id not in held]
    return items


def tokenizer_corpus(cfg: TasksConfig) -> list[str]:
    """Prompts and teacher solutions of both splits: text for `learner.models.tiny.train_tokenizer`."""
    texts = []
    splits: tuple[Split, ...] = ("train", "held_out")
    for split in splits:
        for it in build_tasks(cfg, split):
            texts.append(it.prompt + (it.solution or ""))
    return texts


def sft_examples(items: list[TaskItem], balance: bool = True) -> list[tuple[str, str]]:
    """(prompt, teacher completion) pairs; with `balance`, small sources are repeated to the largest's size."""
    by_source: dict[str, list[TaskItem]] = {}
    for it in items:
        if it.solution is not None:
            by_source.setdefault(it.source, []).append(it)
    if not by_source:
        return []
    top = max(len(v) for v in by_source.values())
    pairs = []
    for group in by_source.values():
        reps = -(-top // len(group)) if balance else 1
        chosen = (group * reps)[:top] if balance else group
        pairs += [(it.prompt, it.solution or "") for it in chosen]
    return pairs
