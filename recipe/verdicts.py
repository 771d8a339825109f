"""Task items and responses scored by the reward service's Scorer: the one verifier.

Training rewards, held-out accuracy, checkpoint choice and `ringrl eval` all come through the same
Scorer (Math-Verify; model-written code only ever runs in its sandbox), so a figure in a table is
the reward the run trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.config.reward import RewardConfig, SandboxConfig
from protocol.schema import TaskKind, Verdict, VerdictStatus
from recipe.tasks import TaskItem
from reward_service.scorer import Item, Scorer


def verdicts(scorer: Scorer, items: Sequence[TaskItem], responses: Sequence[str]) -> list[Verdict]:
    """The Scorer's verdict on each (item, response) pair; a pair that repeats is scored once.

    A model sharpened by RL samples the same program for an item again and again, and each run of
    a program costs a sandbox fork; the verdict depends only on task, reference and response.
    """
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    keys = [(it.task, it.reference.model_dump_json(), r) for it, r in zip(items, responses)]
    first: dict[tuple[TaskKind, str, str], Item] = {}
    for it, r, key in zip(items, responses, keys):
        first.setdefault(key, Item(it.task, r, it.reference))
    scored = dict(zip(first, scorer.score(list(first.values())), strict=True))
    return [scored[key] for key in keys]


def correct(scorer: Scorer, items: Sequence[TaskItem], responses: Sequence[str]) -> list[bool]:
    """Whether each response is right, as the reward service scores it."""
    return [v.status is VerdictStatus.correct for v in verdicts(scorer, items, responses)]


def graded(scorer: Scorer, items: Sequence[TaskItem], greedy: Sequence[str],
           sampled: Sequence[Sequence[str]]) -> tuple[list[bool], list[int]]:
    """Per item: whether its greedy response is right, and how many of its sampled ones are (0 for
    each item when `sampled` is empty). One Scorer call: a greedy answer a sample repeats is checked once."""
    groups = list(sampled) or [[] for _ in items]
    flat = [(it, text) for it, texts in zip(items, groups, strict=True) for text in texts]
    ok = correct(scorer, list(items) + [it for it, _ in flat], list(greedy) + [text for _, text in flat])
    hits, start = [], len(items)
    for texts in groups:
        hits.append(sum(ok[start:start + len(texts)]))
        start += len(texts)
    return ok[:len(items)], hits


def standalone_scorer(backend: str = "warm") -> Scorer:
    """The Scorer of commands outside a run (`ringrl eval`, `select-checkpoint`, `sft --eval-n`): the
    reward defaults with the given sandbox backend. Raises SandboxUnavailable if it cannot start."""
    return Scorer(RewardConfig(sandbox=SandboxConfig(backend=backend)))
