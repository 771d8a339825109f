"""Fixtures of the recipe tests that run `ringrl train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def start_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A short distillation: enough for some groups to have mixed rewards (nothing trains without)."""
    tmp = tmp_path_factory.mktemp("sft")
    cfg = {"run": {"name": "sft", "output_dir": str(tmp), "seed": 0},
           "tasks": {"sources": ["chain_sum", "leg_counting"], "train_size": 1500, "held_out_size": 10},
           "sft": {"batch_size": 16, "max_steps": 1200, "max_minutes": 0, "save_every_steps": 1200,
                   "save_every_minutes": 0, "output_dir": str(tmp / "checkpoints")}}
    (tmp / "sft.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([str(BIN / "ringrl"), "sft", str(tmp / "sft.yaml")], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return str(tmp / "checkpoints" / "step-001200")
