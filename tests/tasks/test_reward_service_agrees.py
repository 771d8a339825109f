"""The built-in tasks' references and teacher solutions, checked by the real reward service."""

from __future__ import annotations

from protocol.config.reward import RewardConfig
from protocol.schema import MathReference
from recipe.tasks import TasksConfig, build_tasks, with_reward_service
from reward_service.scorer import Scorer


def test_reward_service_accepts_teacher_solutions_and_rejects_wrong_ones() -> None:
    items = build_tasks(TasksConfig(held_out_size=6), "held_out")
    wrong = [f"\\boxed{{{int(it.reference.answer) + 1}}}" if isinstance(it.reference, MathReference)
             else (it.solution or "").replace("return", "return 1 +") for it in items]
    scorer = Scorer(RewardConfig())
    try:
        score = with_reward_service(scorer)
        assert all(score(items, [it.solution or "" for it in items]))
        assert not any(score(items, wrong))
    finally:
        scorer.close()
