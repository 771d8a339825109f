"""Loss terms. Every token term is a weighted *sum* (weights come from the step: C3PO uses
1/token_budget), so the same step gives the same loss whatever the micro-batch or rank split."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half precision to float32; float32/float64 kept (the float64 reference test relies on it)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, V] logits -> log-prob of each target and the entropy of each distribution."""
    logits = _upcast(logits)
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def ppo_clip(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss -min(r A, clip(r, 1-lo, 1+hi) A), and where the clip is active."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def tis_weights(learner_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling: min(pi_learner / pi_engine, cap), no gradient."""
    return torch.exp(learner_logp.detach() - behaviour_logp).clamp(max=cap)


def load_balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-style E * sum_i f_i P_i per layer, averaged over layers.

    f_i: share of the k routing slots that chose expert i (sums to 1); P_i: mean router
    probability of expert i. Equals 1 when routing is uniform. `mask` [tokens] excludes padding.
    """
    losses = []
    for layer in router_logits:
        probs = F.softmax(_upcast(layer), dim=-1)
        n_exp = probs.shape[-1]
        w = torch.ones_like(probs[:, 0]) if mask is None else mask.to(probs.dtype)
        chosen = probs.topk(top_k, dim=-1).indices
        counts = torch.zeros_like(probs[0]).scatter_add_(
            0, chosen.reshape(-1), w.repeat_interleave(top_k))
        f = counts / (w.sum() * top_k)
        p = (probs * w[:, None]).sum(0) / w.sum()
        losses.append(n_exp * (f * p).sum())
    return torch.stack(losses).mean()


def router_z_sum(router_logits: tuple[torch.Tensor, ...], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over tokens of logsumexp(router logits)^2, averaged over layers (divide by tokens for the mean)."""
    per_layer = []
    for layer in router_logits:
        z = torch.logsumexp(_upcast(layer), dim=-1) ** 2
        per_layer.append(z.sum() if mask is None else (z * mask.to(z.dtype)).sum())
    return torch.stack(per_layer).mean()
