"""Routing replay on tiny HF MoE models: exact when it replays the model's own routing, a different
forward when it replays other experts, gradients still reach the router."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from learner.batcher import Batcher
from learner.models.tiny import tiny_config
from learner.packing import microbatches
from learner.router_replay import RouterReplay, router_modules
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig
from protocol.schema import Group, Response
from tests.learner.helpers import scored_groups


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tiny_config(arch, vocab_size=64, hidden=32, layers=2, experts=4, top_k=2, expert_ffn=32)
    # random-init routers are near-uniform; a larger gate makes routing matter to the output
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="eager").float()
    for r in router_modules(model):
        torch.nn.init.normal_(r.weight, std=1.0)
    return model


def _own_routing(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """[positions, layers, k] the top-k each router picks in an unreplayed forward."""
    picked: list[torch.Tensor] = []
    handles = [r.register_forward_hook(lambda m, a, out: picked.append(out[2].detach()))
               for r in router_modules(model)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return torch.stack(picked, dim=1)


def _logprobs(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    out = model(input_ids=ids, output_router_logits=True)
    return F.log_softmax(out.logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0], out.router_logits


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe"])
def test_replaying_own_routing_is_exact(arch: str) -> None:
    model = _model(arch)
    ids = torch.randint(2, 64, (1, 24), generator=torch.Generator().manual_seed(1))
    routing = _own_routing(model, ids)
    replay = RouterReplay(model)
    assert replay.num_layers == 2 and routing.shape == (24, 2, 2)
    with torch.no_grad():
        plain, plain_router = _logprobs(model, ids)
        with replay.replay(routing.flip(-1), torch.ones(24, dtype=torch.bool)):  # order within k is free
            replayed, replayed_router = _logprobs(model, ids)
    assert torch.equal(replayed, plain)
    for a, b in zip(plain_router, replayed_router):
        assert torch.equal(a, b)  # the aux losses see the router's own logits
    counts = replay.take_counts()
    assert (counts.tokens, counts.differ) == (24 * 2, 0)


def test_other_experts_change_the_forward_and_are_counted() -> None:
    model = _model("qwen3_moe")
    ids = torch.randint(2, 64, (1, 24), generator=torch.Generator().manual_seed(1))
    routing = _own_routing(model, ids)
    other = (routing + 1) % 4  # every slot moves to another expert
    mask = torch.zeros(24, dtype=torch.bool)
    mask[:12] = True
    replay = RouterReplay(model)
    with torch.no_grad():
        plain, _ = _logprobs(model, ids)
        with replay.replay(other, mask, apply=False):
            observed, _ = _logprobs(model, ids)
        assert torch.equal(observed, plain)  # counting alone changes nothing
        with replay.replay(other, mask):
            replayed, _ = _logprobs(model, ids)
    counts = replay.take_counts()
    # a set of 2 of 4 experts shifted by one (mod 4) is never the same set
    assert counts.tokens == 2 * 2 * 12 and counts.differ == counts.tokens
    assert (replayed - plain).abs().max() > 1e-3


def test_router_still_gets_gradients_under_replay() -> None:
    model = _model("qwen3_moe")
    ids = torch.randint(2, 64, (1, 24), generator=torch.Generator().manual_seed(2))
    routing = _own_routing(model, ids)
    replay = RouterReplay(model)
    with replay.replay(routing, torch.ones(24, dtype=torch.bool)):
        logp, router_logits = _logprobs(model, ids)
    logp.sum().backward()
    for r in replay.routers:
        assert r.weight.grad is not None and r.weight.grad.abs().sum() > 0
    model.zero_grad()
    # the aux losses' path: router logits alone reach the gate under replay too
    with replay.replay(routing, torch.ones(24, dtype=torch.bool)):
        _, router_logits = _logprobs(model, ids)
    sum(torch.logsumexp(z, -1).pow(2).sum() for z in router_logits).backward()
    assert all(r.weight.grad.abs().sum() > 0 for r in replay.routers)


def test_wrong_layer_count_refused() -> None:
    model = _model("qwen3_moe")
    replay = RouterReplay(model)
    with pytest.raises(ValueError, match="3 layers of routing for a model with 2 MoE layers"):
        with replay.replay(torch.zeros(5, 3, 2, dtype=torch.long), torch.ones(5, dtype=torch.bool)):
            pass


def _with_routing(model: torch.nn.Module, groups: list[Group], shift: int = 0) -> list[Group]:
    """Each response with the routing of prompt + response[:-1] run alone (`shift`: moved to other
    experts), as an engine would record it."""
    out = []
    for g in groups:
        responses = []
        for r in g.responses:
            ids = torch.from_numpy(np.concatenate([g.prompt_token_ids, r.token_ids[:-1]]).astype(np.int64))
            routing = (_own_routing(model, ids[None]) + shift) % 4
            responses.append(Response(**{**r.model_dump(), "routed_experts": routing.numpy()}))
        out.append(Group(**{**g.model_dump(), "responses": responses}))
    return out


@pytest.mark.parametrize("layout", ["packed", "bucketed", "padded"])
def test_learner_replays_each_sequence_at_its_own_positions(moe_path: Path, layout: str) -> None:
    cfg = LearnerConfig(token_budget=150, router_replay="r3", layout=layout)  # type: ignore[arg-type]
    learner = Learner(cfg, str(moe_path))
    learner.model.double()  # no near-ties between the one-sequence and the batched forward
    groups = scored_groups(6, seed=3, max_len=20)
    own, other = _with_routing(learner.model, groups), _with_routing(learner.model, groups, shift=1)
    for data, same in ((own, True), (other, False)):
        b = Batcher.from_config(cfg)
        b.add(data, 0)
        step = b.next_step(0, partial=True)
        assert step is not None
        for mb in microbatches(step, 60, layout):
            assert mb.routed_mask is not None
            with torch.no_grad():
                replayed, _ = learner._forward(mb)
                plain, _ = learner._forward(dataclasses.replace(mb, routed_experts=None, routed_mask=None))
            if same:
                torch.testing.assert_close(replayed, plain, rtol=0, atol=1e-12)
            else:
                assert (replayed - plain).abs().max() > 1e-3
        counts = learner.router_replay.take_counts()  # type: ignore[union-attr]
        # every position the engine forwarded (all but a whole response's last), in 2 MoE layers
        assert counts.tokens == 2 * sum(len(p.prompt_ids) + min(p.end, p.response_len - 1)
                                        for p in step.pieces)
        # other experts: all of the first layer differ; a later layer's own choice is made on the
        # replayed layers' output, so it may happen to agree
        assert (counts.differ == 0) if same else (counts.tokens // 2 <= counts.differ < counts.tokens)


def test_train_step_reports_routing_metrics(moe_path: Path) -> None:
    groups = scored_groups(6, seed=4, max_len=20)
    for mode in ("off", "r3"):
        learner = Learner(LearnerConfig(token_budget=100, router_replay=mode), str(moe_path))  # type: ignore[arg-type]
        learner.model.double()
        metrics = learner.train_on_groups(_with_routing(learner.model, groups, shift=1))
        # without replay the learner's own routing is never the shifted one; with it, see above
        low = 1.0 if mode == "off" else 0.5
        assert metrics and all(low <= m["routing_differ_fraction"] <= 1.0 for m in metrics)
        assert all(0.8 < m["routing_replayed_fraction"] < 1.0 for m in metrics)
        assert all(np.isfinite(m["loss"]) for m in metrics)
