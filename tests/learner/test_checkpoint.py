"""A learner killed with SIGKILL resumes from its checkpoint exactly where it left off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from learner.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.learner.resume_proc", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_killed_learner_resumes_exactly(moe_path: Path, tmp_path: Path) -> None:
    full = _run("full", str(moe_path), str(tmp_path / "unused"), str(tmp_path / "full.json"))
    crash = _run("crash", str(moe_path), str(tmp_path / "ckpt"), str(tmp_path / "crash.json"))
    try:
        assert crash.stdout.readline().strip() == "killable"
        crash.send_signal(signal.SIGKILL)  # one step past the checkpoint, mid-run
        crash.wait(30)
        assert full.wait(300) == 0
    finally:
        for p in (full, crash):
            if p.poll() is None:
                p.kill()
                p.wait()
    ckpt = latest_checkpoint(tmp_path / "ckpt")
    assert ckpt is not None and ckpt.name == "step-00000003"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    resumed = _run("resume", str(moe_path), str(tmp_path / "ckpt"), str(tmp_path / "resumed.json"))
    assert resumed.wait(300) == 0
    want = json.loads((tmp_path / "full.json").read_text())
    got = json.loads((tmp_path / "resumed.json").read_text())
    assert min(int(k) for k in got) == 4  # the replayed stream did not retrain anything
    assert len(got) >= 3
    for k, v in got.items():
        assert v == pytest.approx(want[k], abs=1e-6), f"step {k}"
