"""The training objective: one micro-batch's share of the step loss, with its metric sums.

C3PO (Ring-lite): every optimiser step trains exactly `token_budget` response tokens, whatever
the response lengths; the response that crosses the budget is cut at token level (its rest goes
to the next step, or is dropped with `carry_over: false`), and the step loss is a token SUM
divided by the budget, so every token weighs 1/token_budget whether its response is long or short.

The per-token weight is the step plan's (`Step.token_weights`: C3PO 1/token_budget, the DAPO and
GRPO baselines their own normalisers); here it only multiplies. Every token term is a weighted
sum and the router terms are scaled by the micro-batch's share of the step's input tokens, so the
shares of all micro-batches (on all ranks) add up to the step loss whatever the split:

    L = sum(w * PPO-clip [* TIS | * IcePop]) - entropy_coef * sum(w * H)
        + load_balance_coef * LB * share + router_z_coef * Z / step_input_tokens

with LB the Switch-style balance loss and Z the token sum of logsumexp(router logits)^2, both
averaged over MoE layers. TIS and IcePop weigh each token by its train/inference ratio
k = exp(learner - behaviour log-prob) (`mismatch_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F

from protocol.config.learner import LearnerConfig

SUMS = ("pg_loss", "entropy_loss", "lb_loss", "z_loss", "entropy_sum", "tokens", "clipped",
        "mismatch_sum", "tis_clipped", "mismatch_masked", "input_tokens")
"""Keys of `LossTerms.sums`: additive over micro-batches and ranks."""

_T = TypeVar("_T", torch.Tensor, float)


@dataclass(frozen=True)
class ObjectiveConfig:
    """The `LearnerConfig` fields the objective reads (their meaning is documented there)."""

    clip_low: float
    clip_high: float
    entropy_coef: float
    load_balance_coef: float
    router_z_coef: float
    old_logprobs: Literal["behaviour", "recompute"]
    mismatch: Literal["off", "tis", "icepop"] = "off"
    tis_cap: float | None = None
    icepop_band: tuple[float, float] = (0.5, 5.0)

    @classmethod
    def from_config(cls, cfg: LearnerConfig) -> ObjectiveConfig:
        return cls(cfg.clip_low, cfg.clip_high, cfg.entropy_coef, cfg.load_balance_coef,
                   cfg.router_z_coef, cfg.old_logprobs, cfg.mismatch, cfg.tis_cap, cfg.icepop_band)

    def combine(self, pg: _T, entropy: _T, lb: _T, z: _T) -> _T:
        """The loss from its terms: tensors for backward, or summed floats for the step metric."""
        return pg + self.entropy_coef * entropy + self.load_balance_coef * lb + self.router_z_coef * z


@dataclass(frozen=True)
class ObjectiveInputs:
    logits: torch.Tensor
    """[N, V] logits at the positions that predict the loss tokens."""
    targets: torch.Tensor
    """[N] the loss tokens."""
    behaviour_logprobs: torch.Tensor
    """[N] the engine's log-probs of the targets."""
    advantages: torch.Tensor
    """[N] each token's response advantage."""
    weights: torch.Tensor
    """[N] per-token loss weights from the step plan."""
    input_tokens: int
    """Real (non-padding) input tokens of this micro-batch, prompts included."""
    step_input_tokens: int
    """Real input tokens of the whole step, over all micro-batches and ranks."""
    router_logits: tuple[torch.Tensor, ...] = ()
    """Per MoE layer, [input positions, experts]; empty for a dense model."""
    router_mask: torch.Tensor | None = None
    """[input positions] 1 for a real token; None when none is padding."""
    top_k: int = 0
    """Experts per token of the MoE."""


@dataclass(frozen=True)
class LossTerms:
    loss: torch.Tensor
    """This micro-batch's share of the step loss, to backward."""
    sums: dict[str, float]
    """Detached metric sums (keys `SUMS`)."""
    mismatch_max: float
    """max |learner - behaviour| log-prob over its tokens (a max, so not in `sums`)."""


def objective(x: ObjectiveInputs, cfg: ObjectiveConfig) -> LossTerms:
    """One micro-batch's share of the step loss L (module docstring) and its metric sums."""
    logp, entropy = logprobs_and_entropy(x.logits, x.targets)
    w = x.weights.to(logp.dtype)
    beh = x.behaviour_logprobs.to(logp.dtype)
    # one optimiser update per step: the learner's old log-probs are its current ones, detached
    old = logp.detach() if cfg.old_logprobs == "recompute" else beh
    tok_loss, clipped = ppo_clip(logp, old, x.advantages.to(logp.dtype), cfg.clip_low, cfg.clip_high)
    tis_clipped = masked = 0.0
    if cfg.mismatch != "off":
        weight, hit = mismatch_weights(logp, beh, cfg)
        tok_loss = tok_loss * weight
        tis_clipped, masked = (float(hit.sum()), 0.0) if cfg.mismatch == "tis" else (0.0, float(hit.sum()))
    pg = (w * tok_loss).sum()
    ent = -(w * entropy).sum()
    lb = z = torch.zeros((), dtype=logp.dtype)
    if x.router_logits:
        # LB is non-linear in the micro-batch, so each one's is weighted by its share of the step
        share = x.input_tokens / x.step_input_tokens
        lb = load_balance_loss(x.router_logits, x.top_k, x.router_mask) * share
        z = router_z_sum(x.router_logits, x.router_mask) / x.step_input_tokens
    total = cfg.combine(pg, ent, lb, z)
    mismatch = (logp.detach() - beh).abs()
    pg, ent, lb, z = (t.detach() for t in (pg, ent, lb, z))
    sums = {"pg_loss": float(pg), "entropy_loss": float(ent), "lb_loss": float(lb), "z_loss": float(z),
            "entropy_sum": float(entropy.detach().sum()), "tokens": float(x.targets.numel()),
            "clipped": float(clipped.sum()), "mismatch_sum": float(mismatch.sum()),
            "tis_clipped": tis_clipped, "mismatch_masked": masked, "input_tokens": float(x.input_tokens)}
    return LossTerms(total, sums, float(mismatch.max()) if mismatch.numel() else 0.0)


# --- terms ------------------------------------------------------------------------------------
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


def mismatch_weights(learner_logp: torch.Tensor, behaviour_logp: torch.Tensor,
                     cfg: ObjectiveConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights (no gradient) and where the correction bit: capped (tis) or masked (icepop).

    IcePop keeps a token only while k = pi_learner / pi_engine lies inside the band. Against the
    learner's own old log-probs (recompute) the kept tokens are weighted by k, as in the paper;
    against the behaviour log-probs the PPO ratio already carries k, so the mask alone applies.
    """
    k = torch.exp(learner_logp.detach() - behaviour_logp)
    if cfg.mismatch == "tis":
        assert cfg.tis_cap is not None  # the config check requires it
        return k.clamp(max=cfg.tis_cap), k >= cfg.tis_cap
    low, high = cfg.icepop_band
    inside = (k >= low) & (k <= high)
    kept = k if cfg.old_logprobs == "recompute" else torch.ones_like(k)
    return torch.where(inside, kept, torch.zeros_like(k)), ~inside


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
