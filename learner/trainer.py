"""The learner: model + AdamW + batcher; one call = one optimiser step on one C3PO step.

One optimiser update per step (no PPO epochs), so the learner's "old" log-probs of a step are its
current log-probs with no gradient: `old_logprobs: recompute` costs no extra forward.

Data-parallel: when torch.distributed is initialised with more than one rank, parameters, gradients
and AdamW state are sharded with FSDP2; every rank gets the same step, runs its round-robin share
of the micro-batches, and gradients are reduce-scattered with SUM. Token weights already carry the
global normaliser, so the sum is the single-rank gradient. The design (why SUM, uneven micro-batch
counts, what a checkpoint holds): learner/distributed.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from learner.batcher import Batcher, Step
from learner.distributed import (
    clip_grad_norm,
    gradient_sync,
    load_sharded,
    resolve_device,
    zero_pass,
)
from learner.objective import SUMS, ObjectiveConfig, ObjectiveInputs, objective
from learner.packing import MicroBatch, microbatches
from learner.router_replay import RouterReplay
from protocol.config.learner import LearnerConfig
from protocol.schema import Group


def moe_shape(config: Any) -> tuple[int, int] | None:
    """(num_experts, top_k) of a MoE config, None for a dense one."""
    n = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    k = getattr(config, "num_experts_per_tok", None)
    return (int(n), int(k)) if n and k else None


def load_model(path: str, trust_remote_code: bool = False, meta: bool = False) -> torch.nn.Module:
    """The model at `path`; with `meta`, its structure only (no memory, no weights read)."""
    # fp32 master weights whatever the file holds; bf16 compute is autocast (see LearnerConfig.dtype)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # eager experts: fastest on CPU (STACK-NOTES) and the only kernel that also runs float64
    kw = {"experts_implementation": "eager"} if moe_shape(config) else {}
    if meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code, **kw)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                trust_remote_code=trust_remote_code, **kw)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up, then constant: step s (from 0) runs at lr * min(1, (s + 1) / warmup_steps).

    Not transformers' get_constant_schedule_with_warmup: its first step runs at lr 0, which would
    spend a whole step of rollouts on no update.
    """
    return LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)


class Learner:
    def __init__(self, cfg: LearnerConfig, model_path: str) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg)
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if self.world_size > 1:  # before the optimizer: AdamW state is built over the shards
            full = load_model(model_path, cfg.trust_remote_code) if self.rank == 0 else None
            self.model = load_sharded(full, load_model(model_path, cfg.trust_remote_code, meta=True), self.device)
        else:
            self.model = load_model(model_path, cfg.trust_remote_code).to(self.device)
        self.model.train()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self.moe = moe_shape(self.model.config)
        self.router_replay = RouterReplay(self.model) if self.moe else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        self.scheduler = warmup_schedule(self.optimizer, cfg.warmup_steps)
        self.objective_cfg = ObjectiveConfig.from_config(cfg)
        self.batcher = Batcher.from_config(cfg)
        self.version = 0
        """Policy version of the current weights: the number of optimiser steps applied."""
        self.layout = cfg.layout

    # --- one micro-batch --------------------------------------------------------------------
    def _forward(self, mb: MicroBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        kw: dict[str, Any] = {"output_router_logits": True} if self.moe else {}
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.dtype == "bfloat16"
                    else contextlib.nullcontext())
        replay: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self.router_replay is not None and mb.routed_experts is not None and mb.routed_mask is not None:
            # with router_replay: off the engine's routing is still compared, not used
            replay = self.router_replay.replay(mb.routed_experts, mb.routed_mask,
                                               apply=self.cfg.router_replay == "r3")
        with autocast, replay:
            out = self.model(input_ids=mb.input_ids, position_ids=mb.position_ids,
                             attention_mask=mb.attention_mask, use_cache=False, **kw)
        logits = out.logits.reshape(-1, out.logits.shape[-1])[mb.logit_index]
        return logits, tuple(out.router_logits) if self.moe else ()

    def objective_inputs(self, mb: MicroBatch, step_input_tokens: int) -> ObjectiveInputs:
        """Forward one micro-batch; its outputs and loss fields as the objective's inputs."""
        if self.device.type != "cpu":
            mb = dataclasses.replace(mb, **{f.name: v.to(self.device) for f in dataclasses.fields(mb)
                                            if isinstance(v := getattr(mb, f.name), torch.Tensor)})
        logits, router = self._forward(mb)
        return ObjectiveInputs(
            logits=logits, targets=mb.targets, behaviour_logprobs=mb.behaviour_logprobs,
            advantages=mb.advantages, weights=mb.weights, input_tokens=mb.num_real_input_tokens,
            step_input_tokens=step_input_tokens, router_logits=router,
            router_mask=None if mb.attention_mask is None else mb.attention_mask.reshape(-1),
            top_k=self.moe[1] if self.moe else 0)

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, step: Step) -> dict[str, float]:
        """Forward/backward this rank's micro-batches, reduce, clip, AdamW; returns metrics."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=False)
        step_input = sum(len(p.prompt_ids) + p.end for p in step.pieces)
        sums = dict.fromkeys(SUMS, 0.0)
        mismatch_max = 0.0
        mine = microbatches(step, self.cfg.max_tokens_per_microbatch, self.layout, self.rank, self.world_size)
        rounds = self._rounds(len(mine))
        for i in range(rounds):
            gradient_sync(self.model, i == rounds - 1)
            if i >= len(mine):
                zero_pass(self.model, self.device)
                continue
            terms = objective(self.objective_inputs(mine[i], step_input), self.objective_cfg)
            terms.loss.backward()
            mismatch_max = max(mismatch_max, terms.mismatch_max)
            for k in SUMS:
                sums[k] += terms.sums[k]
        routed = self.router_replay.take_counts() if self.router_replay is not None else None
        sums["routed"], sums["routed_differ"] = (routed.tokens, routed.differ) if routed else (0, 0)
        if self.world_size > 1:
            self._all_reduce(sums)
            mm = torch.tensor([mismatch_max], device=self.device)
            dist.all_reduce(mm, op=dist.ReduceOp.MAX)
            mismatch_max = float(mm)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else float("inf")
        grad_norm = clip_grad_norm(params, max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.version += 1
        n = max(sums["tokens"], 1.0)
        return {
            "step": float(self.version),
            "loss": self.objective_cfg.combine(sums["pg_loss"], sums["entropy_loss"], sums["lb_loss"],
                                               sums["z_loss"]),
            "pg_loss": sums["pg_loss"], "entropy_loss": sums["entropy_loss"], "lb_loss": sums["lb_loss"],
            "z_loss": sums["z_loss"], "entropy": sums["entropy_sum"] / n, "tokens": sums["tokens"],
            "input_tokens": sums["input_tokens"], "sequences": float(len(step.pieces)),
            "clip_fraction": sums["clipped"] / n, "mismatch_mean": sums["mismatch_sum"] / n,
            "mismatch_max": mismatch_max, "tis_clip_fraction": sums["tis_clipped"] / n,
            "mismatch_masked_fraction": sums["mismatch_masked"] / n,
            # token-layer pairs: of those with engine routing, the share the learner's own top-k
            # set differs on (replayed or not); and the share of input positions that had it
            "routing_differ_fraction": sums["routed_differ"] / max(sums["routed"], 1.0),
            "routing_replayed_fraction": (sums["routed"] / max(sums["input_tokens"], 1.0)
                                          / (self.router_replay.num_layers if self.router_replay else 1)),
            "grad_norm": grad_norm, "lr": lr, "step_time_s": time.perf_counter() - t0,
        }

    def _rounds(self, mine: int) -> int:
        """Forward/backward passes every rank runs: the most micro-batches any rank has (FSDP's
        passes are collectives, so a rank with fewer pads with zero passes)."""
        if self.world_size == 1:
            return mine
        n = torch.tensor([mine], device=self.device)  # NCCL reduces device tensors only
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        return int(n)

    def _all_reduce(self, sums: dict[str, float]) -> None:
        """The step's objective sums and routing counts over all ranks (the gradients FSDP reduced)."""
        keys = list(sums)  # the objective's SUMS and the routing counts
        vals = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(vals)
        sums.update(zip(keys, vals.tolist()))

    # --- groups in, metrics out -------------------------------------------------------------
    def add_groups(self, groups: Iterable[Group], stage: str | None = None) -> list[str]:
        return self.batcher.add(groups, self.version, stage)

    def set_stage(self, token_budget: int, lr: float) -> None:
        """A services run's next stage: its budget from the next step, its peak lr under the same
        warm-up schedule (the optimiser state carries over, as one long run)."""
        self.batcher.token_budget = token_budget
        self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["lr"] = lr * factor(self.scheduler.last_epoch)

    def train_ready(self, max_steps: int | None = None) -> list[dict[str, float]]:
        """Run every step the buffered data fills (at most max_steps)."""
        out: list[dict[str, float]] = []
        while max_steps is None or len(out) < max_steps:
            step = self.batcher.next_step(self.version)
            if step is None:
                break
            out.append(self.train_step(step))
        return out

    def train_on_groups(self, groups: Iterable[Group]) -> list[dict[str, float]]:
        self.add_groups(groups)
        return self.train_ready()

    def counters(self) -> dict[str, int]:
        return {**asdict(self.batcher.counters), "tokens_buffered": self.batcher.buffered_tokens}
