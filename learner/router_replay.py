"""Routing replay (R3): the learner's forward routes each token to the experts the engine chose.

Without it the learner re-routes every token through its own router, and wherever its router
logits differ slightly from the engine's (bf16 against fp32, other kernels, a near tie) a token is
trained through experts that never produced it. With replay the top-k *choice* comes from the
engine; the gate *values* are still this forward's softmax of the router logits at those experts
(renormalised where the architecture renormalises), so the router gets gradients through them, and
the router logits themselves are left untouched for the load-balance and z losses.

The hook sits on the transformers router module (`*TopKRouter`, the class each MoE model records
`router_logits` from), which returns (logits, top-k weights, top-k ids) for the flattened input
positions: Qwen3-MoE, Qwen2-MoE, Mixtral and OLMoE share that shape. Replayed ids are per input
position and per MoE layer, in layer order; positions without engine routing keep the learner's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ReplayCounts:
    """Token-layer pairs seen with engine routing, and how many of them the learner's own top-k
    set differed on (order within the k does not count)."""

    tokens: int = 0
    differ: int = 0


def router_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's router modules in layer order (empty for a dense model)."""
    recorders = getattr(model, "_can_record_outputs", None) or {}
    rec = recorders.get("router_logits")
    cls = getattr(rec, "target_class", None)
    if cls is None:
        return []
    return [m for m in model.modules() if isinstance(m, cls)]


def _replay_hook(layer: int, experts: torch.Tensor, mask: torch.Tensor, apply: bool,
                 counts: ReplayCounts) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: tuple[torch.Tensor, ...]) -> Any:
        logits, scores, own = output
        ids = experts[:, layer, :].to(own.device)
        if ids.shape != own.shape:
            raise ValueError(f"router replay: layer {layer} routes {tuple(own.shape)} but the replayed "
                             f"ids are {tuple(ids.shape)}")
        m = mask.to(own.device)
        with torch.no_grad():
            differ = (own.sort(-1).values != ids.sort(-1).values).any(-1) & m
            counts.tokens += int(m.sum())
            counts.differ += int(differ.sum())
        if not apply:
            return None
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        top = probs.gather(-1, ids)
        # Mixtral's router has no flag and always renormalises; the others carry norm_topk_prob
        if getattr(module, "norm_topk_prob", True):
            top = top / top.sum(dim=-1, keepdim=True)
        keep = m[:, None]
        return logits, torch.where(keep, top.to(scores.dtype), scores), torch.where(keep, ids, own)
    return hook


class RouterReplay:
    """Installs the replay on a model's routers for the length of one forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.routers = router_modules(model)
        self.counts = ReplayCounts()

    @property
    def num_layers(self) -> int:
        return len(self.routers)

    @contextlib.contextmanager
    def replay(self, experts: torch.Tensor, mask: torch.Tensor, apply: bool = True) -> Iterator[None]:
        """Within the block, every router uses `experts` [positions, MoE layers, k] at the flattened
        input positions where `mask` [positions] is true. `apply=False` only counts how often the
        learner's own routing differs (the metric without replay)."""
        if experts.shape[1] != len(self.routers):
            raise ValueError(f"router replay: {experts.shape[1]} layers of routing for a model with "
                             f"{len(self.routers)} MoE layers")
        ids = experts.long()
        handles = [r.register_forward_hook(_replay_hook(i, ids, mask, apply, self.counts))
                   for i, r in enumerate(self.routers)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def take_counts(self) -> ReplayCounts:
        """The counts since the last call, reset."""
        counts, self.counts = self.counts, ReplayCounts()
        return counts
