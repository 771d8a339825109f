"""The pass-rate feed: items that taught nothing lately are drawn less, yet still drawn."""

from __future__ import annotations

import itertools
from collections import Counter

from protocol.config.tasks import TasksConfig
from protocol.config.train import StageConfig
from recipe.prompts import PassRates, prompt_stream
from recipe.tasks import build_tasks

STAGE = StageConfig(name="math", sources=["chain_sum"], feed="pass_rate")


def _items() -> list:
    return build_tasks(TasksConfig(sources=["chain_sum"], train_size=10), "train")


def _draws(items: list, rates: PassRates, n: int) -> Counter[str]:
    stream = prompt_stream(items, STAGE, seed=3, rates=rates)
    return Counter(p["prompt_id"].split("#")[0] for p in itertools.islice(stream, n))


def test_saturated_items_are_drawn_floor_times_as_often_and_none_is_starved() -> None:
    items = _items()
    rates = PassRates(window=2, floor=0.1)
    mixed = items[0].id
    for it in items[1:]:  # all wrong twice (half of them), all correct twice (the other half)
        for _ in range(2):
            rates.record(f"{it.id}#{len(it.id)}", 0.0 if len(it.id) % 2 else 1.0)
    rates.record(f"{mixed}#0", 0.375)
    counts = _draws(items, rates, 4000)
    assert set(counts) == {it.id for it in items}  # every item still comes up
    saturated = [counts[it.id] for it in items[1:]]
    # Weight 1 against 9 x 0.1: the mixed item takes ~53 % of the draws, each other ~5 %.
    assert 7 < counts[mixed] / (sum(saturated) / len(saturated)) < 14, counts
    assert 0.45 < counts[mixed] / 4000 < 0.6


def test_an_item_that_teaches_again_gets_its_weight_back() -> None:
    items = _items()
    rates = PassRates(window=2, floor=0.1)
    it = items[0].id
    rates.record(f"{it}#a", 1.0)
    rates.record(f"{it}#b", 1.0)
    assert rates.weight(it) == 0.1
    rates.record(f"{it}#c", 0.5)  # one mixed group among the last two
    assert rates.weight(it) == 1.0
    assert rates.weight("never-seen") == 1.0


def test_uniform_feed_is_unchanged_epochs() -> None:
    items = _items()
    first = [p["prompt_id"].split("#")[0] for p in itertools.islice(
        prompt_stream(items, STAGE.model_copy(update={"feed": "uniform"}), seed=3), len(items))]
    assert sorted(first) == sorted(it.id for it in items)  # one epoch: each item once
