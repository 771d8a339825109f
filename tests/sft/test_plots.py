from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe.plots import (
    MetricsError,
    TensorBoardLogger,
    plot_metrics_file,
    read_metrics,
)


def _metrics(tmp_path: Path) -> Path:
    rows = [{"step": s, "reward": s / 10, "entropy": 1 - s / 20, "grad_norm": 0.5, "tokens": 4096,
             "stage": "math" if s < 5 else "code", **({"accuracy": s / 10} if s % 2 == 0 else {})}
            for s in range(10)]
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_plots_are_png_files_one_per_metric(tmp_path: Path) -> None:
    written = plot_metrics_file(_metrics(tmp_path), tmp_path / "plots")
    assert sorted(p.name for p in written) == ["accuracy.png", "entropy.png", "grad_norm.png", "reward.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_metrics_are_skipped_and_bad_lines_named(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.6}\n')
    assert [w.name for w in plot_metrics_file(p, tmp_path / "out")] == ["reward.png"]
    p.write_text('{"step": 1}\n{oops\n')
    with pytest.raises(MetricsError, match=":2:"):
        read_metrics(p)


def test_tensorboard_logger_writes_event_file(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    for row in read_metrics(_metrics(tmp_path)):
        logger.log(row)
    logger.close()
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tb").iterdir())
