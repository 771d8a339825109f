from __future__ import annotations

import math
from pathlib import Path

import pytest

from learner.sft import SFTConfig, train_sft
from recipe.evaluate import Outcomes, eval_rows, evaluate, paired_gain
from recipe.selection import (
    CheckpointStats,
    SelectionConfig,
    choose,
    load_policy,
    measure,
    sample,
)
from recipe.tasks import TasksConfig, build_tasks
from reward_service.scorer import Scorer


def _stats(name: str, entropy: float, accuracy: float) -> CheckpointStats:
    return CheckpointStats(name, entropy, accuracy, 10.0)


def test_choose_prefers_best_accuracy_inside_the_band() -> None:
    stats = [_stats("early", 0.9, 0.2), _stats("mid", 0.4, 0.5), _stats("mid2", 0.3, 0.6),
             _stats("late", 0.05, 0.9)]
    chosen, reason = choose(stats, 0.2, 0.5)
    assert chosen.path == "mid2" and "2 of 4" in reason


def test_choose_falls_back_to_the_closest_to_the_band() -> None:
    stats = [_stats("early", 0.9, 0.2), _stats("late", 0.05, 0.9)]
    chosen, reason = choose(stats, 0.2, 0.5)
    assert chosen.path == "late" and "below the band" in reason
    chosen, _ = choose(stats, 0.6, 0.7)
    assert chosen.path == "early"


def test_choose_ties_and_bad_bands() -> None:
    chosen, _ = choose([_stats("a", 0.3, 0.5), _stats("b", 0.4, 0.5)], 0.2, 0.5)
    assert chosen.path == "b"
    chosen, _ = choose([_stats("a", 0.3, math.nan), _stats("b", 0.25, 0.1)], 0.2, 0.5)
    assert chosen.path == "b"
    with pytest.raises(ValueError):
        choose([_stats("a", 0.3, 0.5)], 0.5, 0.2)
    with pytest.raises(ValueError):
        choose([], 0.1, 0.2)


def test_sharpened_checkpoint_has_lower_entropy_than_random(tiny_model: Path, tmp_path: Path) -> None:
    # One repeated example drives the model to near-certainty on it: a sharpened policy.
    one = [("Question: What is 1 + 2?\nAnswer:\n", "1 + 2 = 3\n\\boxed{3}")] * 64
    cfg = SFTConfig(init_model=str(tiny_model), output_dir=str(tmp_path / "sharp"), batch_size=16,
                    lr=1e-2, warmup_steps=2, max_steps=30, max_minutes=0, save_every_minutes=0)
    (sharp,) = train_sft(cfg, one)
    probe = build_tasks(TasksConfig(held_out_size=4), "held_out")
    sel = SelectionConfig(max_new_tokens=24, samples_per_prompt=2)
    random_stats = measure(tiny_model, probe, [], sel)
    sharp_stats = measure(sharp.path, probe, [], sel)
    assert sharp_stats.entropy < 0.5 * random_stats.entropy
    assert math.isnan(sharp_stats.accuracy)
    model, tok = load_policy(sharp.path)
    (greedy,) = sample(model, tok, [one[0][0]], temperature=0.0, max_new_tokens=24)
    assert greedy[0].text == one[0][1]


def test_held_out_accuracy_needs_a_scorer(tiny_model: Path) -> None:
    items = build_tasks(TasksConfig(held_out_size=1), "held_out")
    with pytest.raises(ValueError, match="needs a Scorer"):
        measure(tiny_model, items, items, SelectionConfig())


def test_evaluate_reports_rows_per_source(tiny_model: Path, scorer: Scorer) -> None:
    items = build_tasks(TasksConfig(held_out_size=3), "held_out")
    rows = evaluate(tiny_model, items, scorer, k=2, samples=3, max_new_tokens=16)
    assert [r.source for r in rows] == ["chain_sum", "leg_counting", "legs_fn", "all"]
    assert rows[-1].items == len(items)
    for r in rows:
        assert 0 <= r.greedy_pass1 <= 1 and 0 <= r.sampled_pass1 <= r.pass_k <= 1 and r.entropy > 0


def _outcomes(items: list, greedy: list[bool], correct: list[int], samples: int = 2) -> Outcomes:
    return Outcomes(items, greedy, correct, samples, [1.0] * len(items), [1] * len(items))


def _pass_k(samples: int, correct: list[int], k: int) -> float:
    items = build_tasks(TasksConfig(sources=["legs_fn"], held_out_size=len(correct)), "held_out")
    (row,) = eval_rows(_outcomes(items, [False] * len(items), correct, samples), k)
    return row.pass_k


def test_pass_at_k_matches_hand_computed_values() -> None:
    assert _pass_k(5, [2], 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert _pass_k(10, [3], 1) == pytest.approx(0.3)
    assert _pass_k(4, [0], 2) == 0.0 and _pass_k(4, [3], 2) == 1.0
    assert _pass_k(8, [2], 4) == pytest.approx(1 - 15 / 70)  # C(6,4)=15, C(8,4)=70
    assert _pass_k(4, [0, 3], 2) == pytest.approx(0.5)  # the mean over items
    with pytest.raises(ValueError, match="k <= samples"):
        _pass_k(3, [1], 4)


def test_paired_gain_matches_a_hand_computed_interval() -> None:
    items = build_tasks(TasksConfig(sources=["legs_fn"], held_out_size=4), "held_out")
    assert len({it.id for it in items}) == 4
    before = _outcomes(items, [False, False, True, True], [0, 1, 2, 2])
    after = _outcomes(items, [True, True, True, False], [2, 2, 2, 1])
    g = paired_gain(before, after)  # per-item differences 1, 1, 0, -1
    sd = math.sqrt(((1 - 0.25) ** 2 * 2 + 0.25 ** 2 + 1.25 ** 2) / 3)
    assert g.mean == pytest.approx(0.25) and g.half_width == pytest.approx(1.96 * sd / 2) and g.items == 4
    assert not g.clear and str(g) == f"+0.250 ± {1.96 * sd / 2:.3f}"
    s = paired_gain(before, after, sampled=True)  # 1, 0.5, 0, -0.5
    assert s.mean == pytest.approx(0.25)
    steady = paired_gain(before, _outcomes(items, [True] * 4, [2, 2, 2, 2]))  # 1, 1, 0, 0
    assert steady.mean == pytest.approx(0.5) and steady.half_width == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)


def test_paired_gain_counts_a_repeated_item_once_in_its_interval() -> None:
    a, b = build_tasks(TasksConfig(sources=["legs_fn"], held_out_size=2), "held_out")
    items = [a, a, a, b]
    g = paired_gain(_outcomes(items, [False] * 4, [0] * 4), _outcomes(items, [True, True, True, False], [0] * 4))
    # The mean is the accuracy difference (3 of 4); the interval rests on 2 items, a (+1, three
    # copies) and b (0): variance 2/1 * ((3 - 3 * 0.75)^2 + (0 - 0.75)^2) / 4^2.
    assert g.items == 2 and g.mean == pytest.approx(0.75)
    assert g.half_width == pytest.approx(1.96 * math.sqrt(2 * (0.75 ** 2 + 0.75 ** 2) / 16))
    with pytest.raises(ValueError, match="same items"):
        paired_gain(_outcomes(items, [False] * 4, [0] * 4), _outcomes(items[::-1], [False] * 4, [0] * 4))
    with pytest.raises(ValueError, match="2 distinct items"):
        paired_gain(_outcomes([a, a], [False] * 2, [0] * 2), _outcomes([a, a], [True] * 2, [0] * 2))
