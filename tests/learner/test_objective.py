"""The objective: loss and gradient against a plain float64 reference; terms by hand; split invariance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from learner import objective as O
from learner.batcher import Batcher, Step
from learner.packing import microbatches
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig
from tests.learner.helpers import scored_groups


def _step(cfg: LearnerConfig, seed: int = 0) -> Step:
    b = Batcher.from_config(cfg)
    b.add(scored_groups(12, seed=seed, max_len=30), 0)
    b.next_step(0)  # the second step starts with a cut-response tail (context without loss)
    step = b.next_step(0)
    assert step is not None
    return step


def _loss_and_grads(learner: Learner, step: Step, max_tokens: int) -> tuple[float, dict[str, torch.Tensor]]:
    learner.model.zero_grad(set_to_none=True)
    step_input = sum(len(p.prompt_ids) + p.end for p in step.pieces)
    total = 0.0
    for mb in microbatches(step, max_tokens, learner.layout):
        loss = O.objective(learner.objective_inputs(mb, step_input), learner.objective_cfg).loss
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}


def _reference(model: torch.nn.Module, step: Step, cfg: LearnerConfig) -> torch.Tensor:
    """Each sequence on its own, token by token, as the recipe states it (float64)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in step.pieces:
        ids = torch.tensor(list(p.prompt_ids) + list(p.response_ids[:p.end]))[None]
        logits = model(input_ids=ids).logits[0]
        for j in range(p.start, p.end):
            logp_all = torch.log_softmax(logits[len(p.prompt_ids) + j - 1], -1)
            logp = logp_all[int(p.response_ids[j])]
            old = float(p.behaviour_logprobs[j])
            ratio = torch.exp(logp - old)
            a = p.advantage
            clipped = torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high)
            token_loss = -torch.minimum(ratio * a, clipped * a)
            entropy = -(logp_all.exp() * logp_all).sum()
            total = total + (token_loss - cfg.entropy_coef * entropy) / cfg.token_budget
    return total


def test_loss_and_gradient_match_float64_reference(moe_path: Path) -> None:
    cfg = LearnerConfig(token_budget=150, max_tokens_per_microbatch=120, entropy_coef=0.01)
    learner = Learner(cfg, str(moe_path))
    learner.model.double()
    learner.layout = "packed"
    step = _step(cfg)
    got, grads = _loss_and_grads(learner, step, cfg.max_tokens_per_microbatch)
    learner.model.zero_grad(set_to_none=True)
    want = _reference(learner.model, step, cfg)
    want.backward()
    assert got == pytest.approx(float(want.detach()), abs=1e-10)
    for n, p in learner.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-10, rtol=1e-8, msg=n)


@pytest.mark.parametrize("layout", ["packed", "bucketed", "padded"])
def test_invariant_to_microbatch_split(moe_path: Path, layout: str) -> None:
    cfg = LearnerConfig(token_budget=150, entropy_coef=0.01, router_z_coef=0.1)
    learner = Learner(cfg, str(moe_path))
    learner.model.double()
    learner.layout = layout
    step = _step(cfg, seed=1)
    one, g1 = _loss_and_grads(learner, step, 10_000)
    many, g2 = _loss_and_grads(learner, step, 40)
    assert len(microbatches(step, 40)) > 3
    assert one == pytest.approx(many, abs=1e-10)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-10, rtol=1e-8, msg=n)


def test_packed_equals_padded(moe_path: Path) -> None:
    """Packing by position ids isolates sequences exactly as separate padded rows do."""
    cfg = LearnerConfig(token_budget=150, entropy_coef=0.01)
    learner = Learner(cfg, str(moe_path))
    learner.model.double()
    learner.layout = "packed"
    step = _step(cfg, seed=2)
    packed, gp = _loss_and_grads(learner, step, 10_000)
    learner.layout = "padded"
    padded, gq = _loss_and_grads(learner, step, 10_000)
    assert packed == pytest.approx(padded, abs=1e-10)
    for n in gp:
        torch.testing.assert_close(gp[n], gq[n], atol=1e-10, rtol=1e-8, msg=n)


def test_load_balance_and_z_loss_by_hand() -> None:
    # 3 tokens, 3 experts, top-1, one layer
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    probs = torch.softmax(logits, -1)
    f = torch.tensor([2 / 3, 1 / 3, 0.0])  # experts chosen: 0, 1, 0
    p = probs.mean(0)
    assert float(O.load_balance_loss((logits,), top_k=1)) == pytest.approx(3 * float((f * p).sum()))
    # two layers average; uniform routing gives exactly 1
    uniform = torch.zeros(4, 3)
    two = O.load_balance_loss((logits, logits), top_k=1)
    assert float(two) == pytest.approx(3 * float((f * p).sum()))
    assert float(O.load_balance_loss((torch.zeros(6, 4),), top_k=2, mask=None)) == pytest.approx(1.0)
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist())
    assert float(O.router_z_sum((logits, uniform[:3]))) == pytest.approx(
        (z + 3 * math.log(3) ** 2) / 2)
    # a masked (padding) token does not count
    mask = torch.tensor([1, 1, 0])
    f2, p2 = torch.tensor([0.5, 0.5, 0.0]), probs[:2].mean(0)
    assert float(O.load_balance_loss((logits,), 1, mask)) == pytest.approx(3 * float((f2 * p2).sum()))


def test_tis_and_clip() -> None:
    lp, beh = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    torch.testing.assert_close(O.tis_weights(lp, beh, cap=2.0), torch.tensor([2.0, math.exp(-1.0)]))
    loss, clipped = O.ppo_clip(torch.tensor([0.0, 0.0]), torch.tensor([-1.0, -1.0]),
                               torch.tensor([1.0, -1.0]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([-1.28, math.e]))
    assert clipped.tolist() == [True, False]


def test_objective_combines_its_terms() -> None:
    g = torch.Generator().manual_seed(0)
    logits, router = torch.randn(3, 5, generator=g), torch.randn(4, 3, generator=g)
    targets, beh = torch.tensor([0, 3, 1]), torch.tensor([-1.0, -2.5, -0.5])
    adv, w = torch.tensor([1.0, -0.5, 2.0]), torch.full((3,), 1 / 8)
    mask = torch.tensor([1, 1, 1, 0])
    cfg = O.ObjectiveConfig(0.2, 0.28, entropy_coef=0.1, load_balance_coef=0.5, router_z_coef=0.25,
                            old_logprobs="recompute", mismatch="tis", tis_cap=1.5)
    x = O.ObjectiveInputs(logits, targets, beh, adv, w, input_tokens=3, step_input_tokens=6,
                          router_logits=(router,), router_mask=mask, top_k=1)
    terms = O.objective(x, cfg)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all[torch.arange(3), targets]
    tis = torch.exp(logp - beh).clamp(max=1.5)  # recompute: ratio 1, so the token loss is -A * tis
    pg = (w * -adv * tis).sum()
    ent = -(w * -(logp_all.exp() * logp_all).sum(-1)).sum()
    lb = O.load_balance_loss((router,), 1, mask) * 3 / 6
    z = (torch.logsumexp(router[:3], -1) ** 2).sum() / 6
    torch.testing.assert_close(terms.loss, pg + 0.1 * ent + 0.5 * lb + 0.25 * z)
    assert terms.sums["pg_loss"] == pytest.approx(float(pg))
    assert terms.sums["tis_clipped"] == float((tis >= 1.5).sum())
    assert terms.mismatch_max == pytest.approx(float((logp - beh).abs().max()))


def test_aux_coefficients_enter_the_loss(moe_path: Path) -> None:
    cfg0 = LearnerConfig(token_budget=150)
    cfg1 = LearnerConfig(token_budget=150, load_balance_coef=0.5, router_z_coef=0.25)
    a, b = Learner(cfg0, str(moe_path)), Learner(cfg1, str(moe_path))
    step = _step(cfg0)
    ma, mb = a.train_step(step), b.train_step(step)
    assert mb["lb_loss"] > 0.9 and mb["z_loss"] > 0
    assert mb["loss"] == pytest.approx(ma["loss"] + 0.5 * mb["lb_loss"] + 0.25 * mb["z_loss"], rel=1e-5)


@pytest.mark.parametrize("old_logprobs", ["recompute", "behaviour"])
def test_icepop_masks_exactly_the_tokens_outside_the_band(old_logprobs: str) -> None:
    """k = exp(learner - behaviour) at 0.3, 0.51, 1, 4.9, 4.99, 5.01: the two outside [0.5, 5] get
    no gradient at all; the others train, weighted by k only against recomputed old
    log-probs (against behaviour ones the PPO ratio already holds k)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    logp = torch.log_softmax(logits.detach(), -1)[torch.arange(6), targets]
    k = torch.tensor([0.3, 0.51, 1.0, 4.9, 4.99, 5.01], dtype=torch.float64)
    beh = logp - torch.log(k)
    adv, w = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5, 1.5]), torch.full((6,), 1 / 16)
    cfg = O.ObjectiveConfig(0.2, 0.28, 0.0, 0.0, 0.0, old_logprobs=old_logprobs,  # type: ignore[arg-type]
                            mismatch="icepop", icepop_band=(0.5, 5.0))
    weight, masked = O.mismatch_weights(logp, beh, cfg)
    assert masked.tolist() == [True, False, False, False, False, True]
    kept = k if old_logprobs == "recompute" else torch.ones_like(k)
    torch.testing.assert_close(weight, torch.where(masked, torch.zeros_like(k), kept))
    terms = O.objective(O.ObjectiveInputs(logits, targets, beh, adv, w, 6, 6), cfg)
    (grad,) = torch.autograd.grad(terms.loss, logits)
    off = O.objective(O.ObjectiveInputs(logits, targets, beh, adv, w, 6, 6),
                      O.ObjectiveConfig(0.2, 0.28, 0.0, 0.0, 0.0, old_logprobs=old_logprobs))  # type: ignore[arg-type]
    (grad_off,) = torch.autograd.grad(off.loss, logits)
    assert (grad[masked] == 0).all() and (grad_off[masked] != 0).any()
    torch.testing.assert_close(grad, weight[:, None] * grad_off)  # the kept tokens train as before (x k)
    assert terms.sums["mismatch_masked"] == 2.0 and terms.sums["tis_clipped"] == 0.0
    assert off.sums["mismatch_masked"] == 0.0


@pytest.mark.parametrize("settings, message", [
    ({"mismatch": "tis", "tis_cap": 1.5}, "mismatch: tis needs old_logprobs: recompute"),
    ({"mismatch": "tis", "old_logprobs": "recompute"}, "tis_cap: set it with mismatch: tis"),
    ({"mismatch": "icepop", "tis_cap": 1.5}, "tis_cap: set it with mismatch: tis"),
    ({"mismatch": "icepop", "icepop_band": (1.2, 5.0)}, "icepop_band: needs 0 < low < 1 < high"),
])
def test_mismatch_settings_that_would_do_nothing_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearnerConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("learner", [{}, {"mismatch": "icepop"},
                                     {"mismatch": "tis", "tis_cap": 1.5, "old_logprobs": "recompute"}])
def test_mismatch_settings_survive_the_services_copy(learner: dict[str, object]) -> None:
    """`serve` commands re-validate a dump of the whole config: every field is then set."""
    from protocol.config.train import TrainConfig

    assert TrainConfig.model_validate({"learner": learner}).services().learner.mismatch == learner.get("mismatch", "off")
