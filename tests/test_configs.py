"""The example configs in configs/ load, and say what their comments claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import load_config
from protocol.config.train import TrainConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    cfg = load_config(path, env={}, model=TrainConfig)
    assert cfg.stages and all(s.token_budget > 0 for s in cfg.stages)


def test_ring_lite_config_has_the_recipe_numbers() -> None:
    cfg = load_config(Path(__file__).parent.parent / "configs" / "ring-lite-gpu.yaml", env={}, model=TrainConfig)
    assert [s.name for s in cfg.stages] == ["math", "code"]
    for s in cfg.stages:
        assert (s.token_budget, s.n, s.max_new_tokens) == (409_600, 16, 32_768)
        assert s.prompts_per_round == 512
    assert cfg.model.path and cfg.learner.loss_type == "c3po" and cfg.learner.mismatch == "icepop"
    assert cfg.rollout.max_model_len >= 32_768 + 2_048
    # 8 engines and 8 learner ranks, one GPU each: two 8-GPU nodes
    assert (cfg.cluster.engines, cfg.learner.ranks, cfg.learner.device) == (8, 8, "cuda")
