"""C3PO batching: exact budget, filters, whole-group advantages, accounting, checkpoint state."""

from __future__ import annotations

import numpy as np
import pytest

from learner.batcher import Batcher, group_advantages, has_signal
from protocol.config.learner import LearnerConfig
from protocol.schema import Group, Response
from tests.learner.helpers import scored_groups


def _batcher(**kw: object) -> Batcher:
    args = dict(mode="tokens", token_budget=97, sequences_per_step=8, max_staleness=2, carry_over=True,
                adv_eps=1e-6, dedup_window=10_000)
    args.update(kw)
    return Batcher(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_every_step_holds_exactly_the_budget(seed: int) -> None:
    b = _batcher(token_budget=int(np.random.default_rng(seed).integers(10, 300)))
    steps = 0
    for chunk in range(20):
        b.add(scored_groups(7, seed=seed * 100 + chunk, min_len=1, max_len=120, prefix=f"c{chunk}-"), 0)
        while (step := b.next_step(0)) is not None:
            assert step.num_tokens == b.token_budget
            steps += 1
        assert b.accounting_balances()
    assert steps > 20
    c = b.counters
    assert c.tokens_trained == steps * b.token_budget
    assert c.tokens_in == c.tokens_trained + c.tokens_filtered + c.tokens_stale + b.buffered_tokens


def test_cut_response_continues_in_next_step_with_its_prefix_as_context() -> None:
    b = _batcher(token_budget=50)
    g = scored_groups(1, seed=3, n=2, min_len=40, max_len=40)[0]
    g.responses[0].reward, g.responses[1].reward = 1.0, 0.0
    b.add([g], 0)
    first = b.next_step(0, partial=True)
    second = b.next_step(0, partial=True)
    assert [(p.index, p.start, p.end) for p in first.pieces] == [(0, 0, 40), (1, 0, 10)]
    assert [(p.index, p.start, p.end) for p in second.pieces] == [(1, 10, 40)]
    # the advantage was fixed on the whole group, not recomputed for the cut part
    assert first.pieces[1].advantage == second.pieces[0].advantage == pytest.approx(-1.0, abs=1e-5)


def test_without_carry_over_only_the_rest_of_the_cut_response_is_dropped() -> None:
    b = _batcher(token_budget=30, carry_over=False)
    b.add(scored_groups(10, seed=1, min_len=10, max_len=20), 0)
    step = b.next_step(0)
    cut = step.pieces[-1]
    assert step.num_tokens == 30 and cut.end < cut.response_len
    c = b.counters
    assert c.tokens_dropped_leftover == cut.response_len - cut.end
    assert b.buffered_tokens == c.tokens_in - c.tokens_filtered - 30 - c.tokens_dropped_leftover > 0
    assert all(p.start == 0 for p in b.buffer)  # later responses wait whole for the next step
    assert b.accounting_balances()


@pytest.mark.parametrize("carry_over", [False, True])
def test_plan_does_not_depend_on_how_groups_arrive(carry_over: bool) -> None:
    groups = scored_groups(12, seed=6, min_len=5, max_len=40)

    def plan(batcher: Batcher, chunks: list[list[Group]]) -> list[list[tuple[str, int, int, int]]]:
        steps = []
        for chunk in chunks:
            batcher.add(chunk, 0)
            while (step := batcher.next_step(0)) is not None:
                steps.append([(p.group_id, p.index, p.start, p.end) for p in step.pieces])
        assert batcher.accounting_balances()
        return steps

    at_once, one_by_one = (_batcher(token_budget=37, carry_over=carry_over) for _ in range(2))
    want = plan(at_once, [groups])
    assert len(want) > 3
    assert plan(one_by_one, [[g] for g in groups]) == want
    assert at_once.counters == one_by_one.counters


def test_zero_variance_and_stale_groups_dropped_and_counted() -> None:
    b = _batcher(max_staleness=2)
    flat, fresh, stale = scored_groups(3, seed=2, prefix="x")
    for r in flat.responses:
        r.reward = 1.0
    fresh.responses[0].reward, fresh.responses[1].reward = 1.0, 0.0
    stale.responses[0].reward, stale.responses[1].reward = 1.0, 0.0
    for r in fresh.responses:
        r.policy_version = 8
    for r in stale.responses:
        r.policy_version = 7  # 10 - 7 > 2
    stale.responses[0].policy_version = 9  # the group's version is its oldest response's
    b.add([flat, fresh, stale], current_version=10)
    c = b.counters
    assert (c.groups_filtered, c.groups_stale) == (1, 1)
    assert c.tokens_filtered == sum(len(r.token_ids) for r in flat.responses)
    assert c.tokens_stale == sum(len(r.token_ids) for r in stale.responses)
    assert {p.group_id for p in b.buffer} == {fresh.group_id}
    # buffered data ages as the learner moves on
    b.drop_stale(current_version=11)
    assert b.buffered_tokens == 0 and c.groups_stale == 2 and b.accounting_balances()


def _continued(versions: list[tuple[int, int]]) -> Group:
    """A group whose responses a weight update continued: tokens by several versions."""
    g = scored_groups(1, seed=4, n=2, min_len=10, max_len=10, prefix="cont")[0]
    rewards = [1.0, 0.0]
    return g.model_copy(update={"responses": [
        Response(**{**r.model_dump(), "reward": rewards[i], "policy_version": versions[0][1],
                    "token_versions": versions}) for i, r in enumerate(g.responses)]})


@pytest.mark.parametrize("by, fate", [("oldest", "stale"), ("newest", "buffered")])
def test_staleness_of_continued_responses(by: str, fate: str) -> None:
    # tokens 0-4 sampled by version 7, 5-9 by version 9; the learner is at 10, the bound 2
    b = _batcher(max_staleness=2, staleness_by=by)
    g = _continued([(0, 7), (5, 9)])
    assert b.add([g], current_version=10) == [fate]
    c = b.counters
    assert (c.groups_in, c.groups_stale, c.tokens_in) == (1, int(fate == "stale"), 20)
    assert b.accounting_balances()
    if fate == "buffered":
        assert {p.policy_version for p in b.buffer} == {9}
        b.drop_stale(current_version=11)
        assert b.buffered_tokens == 20  # 11 - 9 is within the bound
        b.drop_stale(current_version=12)
        assert b.buffered_tokens == 0 and c.groups_stale == 1 and c.tokens_stale == 20
        assert b.accounting_balances()


def test_staleness_by_comes_from_the_config() -> None:
    assert Batcher.from_config(LearnerConfig()).staleness_by == "oldest"
    assert Batcher.from_config(LearnerConfig(staleness_by="newest")).staleness_by == "newest"


def test_advantages_are_group_normalised() -> None:
    r = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    want = (r - r.mean()) / (r.std() + 1e-6)
    np.testing.assert_allclose(group_advantages(r, 1e-6), want)
    assert not has_signal(np.ones(4)) and has_signal(np.array([0.0, 1.0]))


def test_replayed_groups_are_deduplicated_across_checkpoint() -> None:
    groups = scored_groups(12, seed=4)
    b = _batcher()
    b.add(groups[:8], 0)
    b.next_step(0)
    restored = _batcher()
    restored.load_state_dict(b.state_dict())
    restored.add(groups, 0)  # the stream replays everything not acked
    assert restored.counters.groups_duplicate == 8
    assert restored.counters.groups_in == 12
    assert restored.accounting_balances()


def test_sequence_mode_takes_whole_responses() -> None:
    b = _batcher(mode="sequences", sequences_per_step=5, normaliser="sequences")
    b.add(scored_groups(6, seed=5), 0)
    step = b.next_step(0)
    assert len(step.pieces) == 5
    assert all(p.start == 0 and p.end == p.response_len for p in step.pieces)
    assert step.token_weights(step.pieces[0]) == 1 / (step.pieces[0].response_len * 5)
