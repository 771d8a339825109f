from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from learner.models.tiny import build_tiny_model
from recipe.tasks import TasksConfig, build_tasks, sft_examples, tokenizer_corpus
from recipe.verdicts import standalone_scorer
from reward_service.scorer import Scorer

TASKS = TasksConfig(train_size=60, held_out_size=8)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A very small random MoE with a tokenizer trained on the task text (seconds to build)."""
    out = tmp_path_factory.mktemp("tiny") / "init"
    return build_tiny_model(out, "qwen3_moe", texts=tokenizer_corpus(TASKS), vocab_size=400,
                            hidden=64, layers=2, experts=4, expert_ffn=64)


@pytest.fixture(scope="session")
def examples() -> list[tuple[str, str]]:
    return sft_examples(build_tasks(TASKS, "train"))


@pytest.fixture(scope="session")
def scorer() -> Iterator[Scorer]:
    """The reward service's Scorer as `ringrl eval` builds it (reward defaults, warm sandbox)."""
    s = standalone_scorer()
    yield s
    s.close()
