"""Run metrics as pictures: PNG plots at the end of a run, TensorBoard scalars while it runs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

PLOTTED: dict[str, str] = {
    "reward": "mean reward",
    "accuracy": "held-out greedy accuracy",
    "accuracy_sampled": "held-out sampled pass@1",
    "accuracy_curve": "held-out greedy acc. (in-stage subset)",
    "accuracy_curve_sampled": "held-out pass@1 (in-stage subset)",
    "filtered_share": "share of groups filtered",
    "entropy": "mean token entropy (nats)",
    "grad_norm": "gradient norm",
}
"""Metric key -> y-axis label; one PNG per key present in the metrics file."""


class MetricsError(ValueError):
    """A metrics file that cannot be read; str() names the file and line."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines skipped."""
    rows = []
    p = Path(path)
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricsError(f"{p}:{n}: not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict) or "step" not in row:
            raise MetricsError(f"{p}:{n}: each line must be an object with a `step` key")
        rows.append(row)
    return rows


def _stage_starts(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    starts, last = [], None
    for r in rows:
        stage = r.get("stage")
        if stage is not None and stage != last:
            starts.append((float(r["step"]), str(stage)))
            last = stage
    return starts


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_metrics(rows: Sequence[Mapping[str, Any]], out_dir: str | Path,
                 keys: Iterable[str] = PLOTTED) -> list[Path]:
    """One PNG per metric key present (x: step), stage boundaries as dashed lines; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = _stage_starts(rows)
    written = []
    for key in keys:
        # One line per stage: stages measure different task sets, so joining them would draw a
        # trend that is not there.
        by_stage: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if _finite(r.get(key)):
                by_stage.setdefault(str(r.get("stage", "")), []).append((float(r["step"]), float(r[key])))
        if not by_stage:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for points in by_stage.values():
            ax.plot([p[0] for p in points], [p[1] for p in points], color="C0",
                    marker="." if len(points) < 50 else None)
        for step, name in stages:
            ax.axvline(step, color="grey", linestyle="--", linewidth=1)
            ax.annotate(name, (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="grey")
        ax.set_xlabel("step")
        ax.set_ylabel(PLOTTED.get(key, key))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_metrics_file(metrics_jsonl: str | Path, out_dir: str | Path) -> list[Path]:
    return plot_metrics(read_metrics(metrics_jsonl), out_dir)


class TensorBoardLogger:
    """Numeric fields of each metrics row as TensorBoard scalars against its `step`."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and _finite(value):
                self._writer.add_scalar(key, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
