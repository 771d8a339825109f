"""Held-out accuracy of a checkpoint: greedy pass@1, sampled pass@1 and unbiased pass@k."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from protocol.schema import TaskKind

from actors.entropy import load_policy, mean_entropy, sample
from actors.tasks import ScoreFn, TaskItem, TasksConfig, build_tasks, load_jsonl, score_all
from actors.tasks.build import Split


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # The product form avoids huge binomials.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


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


def _row(source: str, greedy: list[bool], counts: list[int], samples: int, k: int, entropy: float) -> EvalRow:
    return EvalRow(source, len(greedy), sum(greedy) / len(greedy), sum(counts) / (samples * len(counts)),
                   sum(pass_at_k(samples, c, k) for c in counts) / len(counts), k, samples, entropy)


def evaluate(path: str | Path, items: Sequence[TaskItem], *, k: int = 4, samples: int | None = None,
             temperature: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64,
             seed: int = 0, score: ScoreFn = score_all) -> list[EvalRow]:
    """One row per task source, then an `all` row; `samples` (default k) responses per item."""
    if not items:
        raise ValueError("no held-out items to evaluate")
    n = samples or k
    if n < k:
        raise ValueError(f"--samples ({n}) must be at least --k ({k})")
    model, tok = load_policy(path)
    prompts = [it.prompt for it in items]
    greedy = sample(model, tok, prompts, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    sampled = sample(model, tok, prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, seed=seed)
    greedy_ok = score(items, [g[0].text for g in greedy])
    flat_ok = score([it for it in items for _ in range(n)], [s.text for g in sampled for s in g])
    counts = [sum(flat_ok[i * n:(i + 1) * n]) for i in range(len(items))]
    rows = []
    sources = sorted({it.source for it in items})
    for src in sources:
        idx = [i for i, it in enumerate(items) if it.source == src]
        rows.append(_row(src, [greedy_ok[i] for i in idx], [counts[i] for i in idx], n, k,
                         mean_entropy([sampled[i] for i in idx])))
    if len(sources) > 1:
        rows.append(_row("all", greedy_ok, counts, n, k, mean_entropy(sampled)))
    return rows


def eval_table(rows: Sequence[EvalRow], title: str) -> Table:
    table = Table(title=title)
    k = rows[0].k if rows else 1
    for col in ("source", "items", "greedy pass@1", "sampled pass@1", f"pass@{k}", "entropy"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in rows:
        table.add_row(r.source, str(r.items), f"{r.greedy_pass1:.3f}", f"{r.sampled_pass1:.3f}",
                      f"{r.pass_k:.3f}", f"{r.entropy:.3f}")
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
