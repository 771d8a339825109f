from __future__ import annotations

from pathlib import Path

import pytest

from tests.learner.helpers import tiny_moe


@pytest.fixture(scope="session")
def moe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-expert top-2 Qwen3-MoE with a local tokenizer."""
    return tiny_moe(tmp_path_factory.mktemp("tiny-moe"))
