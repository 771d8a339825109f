"""Every config section loads from protocol/config/ alone, with no torch import."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from protocol.config import load_config
from protocol.config.train import DEFAULT_CONFIG, SFTRunConfig, TrainConfig
cfg = load_config(DEFAULT_CONFIG, env={}, model=TrainConfig)
load_config(None, env={}, model=SFTRunConfig)
heavy = sorted(m for m in ("torch", "transformers", "vllm", "ray") if m in sys.modules)
print(len(cfg.stages), heavy)
"""


def test_the_default_config_loads_without_torch() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0].endswith(" []"), f"configs imported heavy modules: {r.stdout}"
