"""Turn a step's pieces into forward inputs: packed micro-batches (default) or padded ones.

Packed: every sequence of a micro-batch is concatenated into one row whose position ids restart
at 0 per sequence and no attention mask is passed; transformers (>= 4.56) then builds a
block-diagonal causal mask from the position ids for the sdpa/eager kernels, so no token attends
across a boundary (tests/learner/test_objective.py checks packed against padded rows).

Each sequence is prompt + response[:end]; the loss covers response tokens [start, end), predicted
from the position before each. Targets are gathered by flat index, so packed and padded layouts
share one objective (learner/objective.py); this module only lays out tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.batcher import Piece, Step


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    """[rows, T] token ids."""
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    """None when packed; [rows, T] (1 = real token) when padded."""
    logit_index: torch.Tensor
    """[N] flat indices into rows*T of the positions whose logits predict the loss tokens."""
    targets: torch.Tensor
    """[N] the loss tokens."""
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor
    weights: torch.Tensor
    """[N] each token's `Step.token_weights` (what it means: learner/objective.py)."""
    routed_experts: torch.Tensor | None = None
    """[rows*T, MoE layers, k] the engine's experts per flat input position (routing replay);
    None when no sequence of the micro-batch carries routing."""
    routed_mask: torch.Tensor | None = None
    """[rows*T] true where `routed_experts` holds the engine's routing."""

    @property
    def num_real_input_tokens(self) -> int:
        return int(self.input_ids.numel() if self.attention_mask is None else self.attention_mask.sum())


def _sequence(p: Piece) -> np.ndarray:
    return np.concatenate([p.prompt_ids, p.response_ids[:p.end]])


def plan_microbatches(pieces: list[Piece], max_tokens: int) -> list[list[int]]:
    """Greedy in arrival order: indices of pieces per micro-batch, each <= max_tokens input tokens
    (a longer sequence alone). Arrival order keeps the plan identical on every rank."""
    plans: list[list[int]] = []
    size = 0
    for i, p in enumerate(pieces):
        n = len(p.prompt_ids) + p.end
        if plans and size + n <= max_tokens:
            plans[-1].append(i)
            size += n
        else:
            plans.append([i])
            size = n
    return plans


def plan_buckets(pieces: list[Piece], max_tokens: int) -> list[list[int]]:
    """Length-bucketed: sequences sorted by length, each micro-batch padded to its longest, at
    most max_tokens padded tokens. Near-zero padding, and attention stays per sequence (a packed
    row's sdpa cost grows with the square of the row, which dominates on small models)."""
    order = sorted(range(len(pieces)), key=lambda i: (len(pieces[i].prompt_ids) + pieces[i].end, i))
    plans: list[list[int]] = []
    for i in order:
        n = len(pieces[i].prompt_ids) + pieces[i].end
        if plans and n * (len(plans[-1]) + 1) <= max_tokens:  # sorted: n is the new longest
            plans[-1].append(i)
        else:
            plans.append([i])
    return plans


def _token_fields(step: Step, idx: list[int], offsets: list[int]) -> dict[str, torch.Tensor]:
    logit_index, targets, beh, adv, w = [], [], [], [], []
    for i, off in zip(idx, offsets):
        p = step.pieces[i]
        # token response[j] sits at off + len(prompt) + j and is predicted by the position before it
        pos = off + len(p.prompt_ids) + np.arange(p.start, p.end) - 1
        logit_index.append(pos)
        targets.append(p.response_ids[p.start:p.end])
        beh.append(p.behaviour_logprobs[p.start:p.end])
        adv.append(np.full(p.num_tokens, p.advantage))
        w.append(np.full(p.num_tokens, step.token_weights(p)))
    cat = np.concatenate
    return dict(logit_index=torch.from_numpy(cat(logit_index)).long(),
                targets=torch.from_numpy(cat(targets)).long(),
                behaviour_logprobs=torch.from_numpy(cat(beh).astype(np.float32)),
                advantages=torch.from_numpy(cat(adv).astype(np.float64)),
                weights=torch.from_numpy(cat(w).astype(np.float64)))


def _routing(step: Step, idx: list[int], offsets: list[int], positions: int) -> dict[str, torch.Tensor]:
    pieces = [step.pieces[i] for i in idx]
    shapes = {p.routed_experts.shape[1:] for p in pieces if p.routed_experts is not None}
    if not shapes:
        return {}
    if len(shapes) > 1:
        raise ValueError(f"routing of different shapes {sorted(shapes)} in one step: one model's "
                         "engines must all record the same [MoE layers, k]")
    layers, k = shapes.pop()
    ids = torch.zeros((positions, layers, k), dtype=torch.long)
    mask = torch.zeros(positions, dtype=torch.bool)
    for p, off in zip(pieces, offsets):
        if p.routed_experts is None:
            continue
        # the sequence's last position predicts no loss token, and the engine never forwarded it
        n = min(len(p.routed_experts), len(p.prompt_ids) + p.end)
        ids[off:off + n] = torch.from_numpy(p.routed_experts[:n].astype(np.int64))
        mask[off:off + n] = True
    return dict(routed_experts=ids, routed_mask=mask)


def pack(step: Step, idx: list[int]) -> MicroBatch:
    seqs = [_sequence(step.pieces[i]) for i in idx]
    offsets = np.cumsum([0] + [len(s) for s in seqs[:-1]]).tolist()
    ids = torch.from_numpy(np.concatenate(seqs)).long()[None]
    pos = torch.from_numpy(np.concatenate([np.arange(len(s)) for s in seqs])).long()[None]
    return MicroBatch(ids, pos, None, **_token_fields(step, idx, offsets),
                      **_routing(step, idx, offsets, ids.numel()))


def pad(step: Step, idx: list[int], pad_id: int = 0) -> MicroBatch:
    """One row per sequence, right-padded to the longest: the naive layout, for comparison."""
    seqs = [_sequence(step.pieces[i]) for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.from_numpy(s)
        mask[r, :len(s)] = 1
    pos = torch.arange(width).expand(len(seqs), -1).contiguous()
    offsets = [r * width for r in range(len(seqs))]
    return MicroBatch(ids, pos, mask, **_token_fields(step, idx, offsets),
                      **_routing(step, idx, offsets, ids.numel()))


LAYOUTS = ("packed", "bucketed", "padded")


def microbatches(step: Step, max_tokens: int, layout: str = "packed", rank: int = 0,
                 world_size: int = 1) -> list[MicroBatch]:
    """This rank's micro-batches of the step (round-robin over the shared plan).

    packed: arrival order, concatenated rows; bucketed: sorted by length, padded per bucket;
    padded: arrival order, padded rows (the naive baseline).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    build = pack if layout == "packed" else pad
    plans = (plan_buckets if layout == "bucketed" else plan_microbatches)(step.pieces, max_tokens)
    return [build(step, idx) for k, idx in enumerate(plans) if k % world_size == rank]
