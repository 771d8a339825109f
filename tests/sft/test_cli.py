"""Bad input to the data/SFT/eval commands: exit != 0 with one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def ringrl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("ringrl")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300,
                          env=None if env is None else os.environ | env)


def _one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], r.stderr


def test_eval_of_missing_checkpoint(tmp_path: Path) -> None:
    _one_line_error(ringrl("eval", str(tmp_path / "nope")), "not a model folder")


def test_select_checkpoint_with_empty_band(tmp_path: Path) -> None:
    _one_line_error(ringrl("select-checkpoint", str(tmp_path), "--lo", "0.5", "--hi", "0.1"), "band is empty")


def test_sft_config_with_unknown_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sft:\n  learning_rate: 0.1\n")
    _one_line_error(ringrl("sft", str(cfg)), "sft.learning_rate: unknown field")


def test_eval_with_bad_data_file(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "task": "math"}\n')
    _one_line_error(ringrl("eval", str(tiny_model), "--data", str(data)), "d.jsonl:1: answer")


def test_eval_against_itself_gains_nothing(tiny_model: Path, tmp_path: Path) -> None:
    # Same weights, same items, same sampling seed: every per-item difference is exactly zero.
    r = ringrl("eval", str(tiny_model), "--against", str(tiny_model), "--n", "3", "--k", "2",
               "--max-new-tokens", "8", "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr
    assert "paired by item" in r.stdout and "+0.000 ± 0.000" in r.stdout
    gain = json.loads((tmp_path / "e.json").read_text())["gain"]
    assert gain["greedy"]["mean"] == 0 and gain["sampled"]["half_width"] == 0 and gain["greedy"]["items"] > 3


@pytest.mark.parametrize("command", ["eval", "select-checkpoint"])
def test_scoring_commands_stop_when_no_sandbox_can_start(tiny_model: Path, tmp_path: Path, command: str) -> None:
    # Without bwrap on PATH the default backend cannot start; the model's programs must then not run at all.
    r = ringrl(command, str(tiny_model), env={"PATH": str(tmp_path)})
    _one_line_error(r, "sandbox backend 'warm': bwrap not found on PATH")
    assert "--sandbox" in r.stderr


def test_eval_against_a_missing_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    _one_line_error(ringrl("eval", str(tiny_model), "--against", str(tmp_path / "nope")), "not a model folder")


@pytest.mark.slow
def test_sft_then_select_then_eval_end_to_end(tmp_path: Path) -> None:
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"tasks: {{train_size: 40, held_out_size: 4}}\n"
                   f"sft: {{output_dir: {tmp_path / 'sft'}, max_steps: 6, max_minutes: 0, batch_size: 8,"
                   f" save_steps: [3], save_every_minutes: 0}}\n")
    r = ringrl("sft", str(cfg))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "sft").glob("step-*")) == ["step-000003", "step-000006"]
    r = ringrl("select-checkpoint", str(tmp_path / "sft"), "--probe-size", "2", "--eval-size", "2",
               "--max-new-tokens", "8", "--lo", "0", "--hi", "100", "--json", str(tmp_path / "sel.json"))
    assert r.returncode == 0, r.stderr
    assert "chose" in r.stdout and (tmp_path / "sel.json").is_file()
    r = ringrl("eval", str(tmp_path / "sft" / "step-000006"), "--n", "2", "--k", "2", "--max-new-tokens", "8",
               "--task", "math")
    assert r.returncode == 0, r.stderr
    assert "pass@2" in r.stdout


def test_sft_with_missing_init_model(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sft:\n  init_model: {tmp_path / 'none'}\n  output_dir: {tmp_path / 'out'}\n")
    _one_line_error(ringrl("sft", str(cfg)), "sft.init_model:")
