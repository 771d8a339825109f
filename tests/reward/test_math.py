"""The math verifier against a table of equivalence cases, and its out-of-process deadline."""

from __future__ import annotations

import pytest

from protocol.schema import MathReference, TaskKind, VerdictStatus
from reward_service.scorer import Item, Scorer
from tests.reward.math_cases import CASES


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 200


@pytest.fixture(scope="module")
def verdicts(default_scorer: Scorer) -> list[str]:
    items = [Item(TaskKind.math, resp, MathReference(answer=gold)) for resp, gold, _ in CASES]
    return [v.status.value for v in default_scorer.score(items)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0][-40:]}|{c[1]}" for c in CASES])
def test_case(index: int, verdicts: list[str]) -> None:
    response, gold, expected = CASES[index]
    assert verdicts[index] == expected, (response, gold)


def test_answer_pattern_replaces_boxed() -> None:
    from tests.reward.conftest import reward_config
    cfg = reward_config().model_copy(update={"answer_pattern": r"Answer:\s*(\S+)", "math_workers": 1})
    s = Scorer(cfg)
    try:
        got = s.score([Item(TaskKind.math, "Answer: 0.5", MathReference(answer="\\frac{1}{2}")),
                       Item(TaskKind.math, "\\boxed{0.5}", MathReference(answer="0.5"))])
    finally:
        s.close()
    assert [v.status for v in got] == [VerdictStatus.correct, VerdictStatus.no_answer]


def test_stuck_verification_is_killed_and_pool_recovers(default_scorer: Scorer) -> None:
    kills = default_scorer.math.kills
    got = default_scorer.score([Item(TaskKind.math, "\\boxed{9^{9^{9^{9}}}}", MathReference(answer="1")),
                              Item(TaskKind.math, "\\boxed{2}", MathReference(answer="2"))])
    assert [v.status for v in got] == [VerdictStatus.timeout, VerdictStatus.correct]
    assert default_scorer.math.kills == kills + 1
    assert default_scorer.math.alive() == 2
