"""The per-step record: JSONL row, TensorBoard event file and console line."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from recipe.run_log import RunLog


def test_a_step_without_new_groups_logs_no_nan_reward(tmp_path: Path) -> None:
    # A step trained only on carried-over tokens has no fresh rewards; its mean is NaN.
    buf = io.StringIO()
    log = RunLog(tmp_path, Console(file=buf, width=200))
    log.log({"step": 7, "stage": "code", "reward": float("nan"), "entropy": 0.25, "tokens": 4096.0})
    log.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 7, "stage": "code", "entropy": 0.25, "tokens": 4096.0}
    line = buf.getvalue()
    assert "nan" not in line and "entropy 0.250" in line and "tokens 4096" in line
    assert any((tmp_path / "tensorboard").iterdir())


def test_a_new_run_in_the_same_folder_starts_its_own_metrics_file(tmp_path: Path) -> None:
    console = Console(file=io.StringIO())
    for step in (1, 2):
        log = RunLog(tmp_path, console)
        log.log({"step": step, "tokens": 4096.0}, line=False)
        log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "tokens": 4096.0}]
