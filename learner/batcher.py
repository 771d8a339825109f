"""C3PO batching: filter groups, compute advantages, fill each step with exactly `token_budget` tokens.

The unit the batcher moves is a `Piece`: a contiguous span `[start, end)` of one response's tokens.
A whole response is one piece; the cut at the budget splits it into two pieces, of which the second
keeps the first's tokens as (loss-free) context, so the model conditions on the same prefix the
engine sampled from. With `carry_over: false` that second piece is dropped instead; whole
responses behind it always wait for the next step, so the plan does not depend on how the groups
happened to arrive.

Advantages are computed on the whole group at ingest, before any cut, so a cut never changes the
value a token is trained with. Token accounting always balances:

    generated = trained + filtered + stale + dropped_leftover + buffered
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from protocol.schema import Group, Response

StalenessBy = Literal["oldest", "newest"]


@dataclass
class Piece:
    group_id: str
    index: int
    """Response index within its group."""
    policy_version: int
    """Its response's version by the batcher's `staleness_by`: what the staleness bound measures."""
    prompt_ids: np.ndarray
    response_ids: np.ndarray
    behaviour_logprobs: np.ndarray
    advantage: float
    start: int
    end: int
    """Loss is on response tokens [start, end); response_ids[:start] is context only."""
    routed_experts: np.ndarray | None = None
    """The engine's routing of prompt + response[:-1], [positions, MoE layers, k], for replay."""

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def response_len(self) -> int:
        return len(self.response_ids)

    def split(self, k: int) -> tuple["Piece", "Piece"]:
        """The first k loss tokens, and the rest (which keeps the first part as context)."""
        cut = self.start + k
        head = Piece(**{**self.__dict__, "end": cut})
        tail = Piece(**{**self.__dict__, "start": cut})
        return head, tail


@dataclass
class Step:
    pieces: list[Piece]
    policy_version: int
    """Learner version when the step was built (the version being updated)."""
    normaliser: Literal["budget", "tokens", "sequences"]
    token_budget: int
    num_sequences: int
    """For grpo: the fixed number of sequences the loss averages over."""

    @property
    def num_tokens(self) -> int:
        return sum(p.num_tokens for p in self.pieces)

    def token_weights(self, piece: Piece) -> float:
        """Loss weight of each token of `piece`: the step loss is sum(weight * token_loss)."""
        if self.normaliser == "budget":
            return 1.0 / self.token_budget
        if self.normaliser == "tokens":
            return 1.0 / self.num_tokens
        return 1.0 / (piece.response_len * self.num_sequences)


@dataclass
class Counters:
    """Groups and response tokens by fate. All monotonic, checkpointed with the batcher."""

    groups_in: int = 0
    groups_duplicate: int = 0
    groups_filtered: int = 0
    groups_stale: int = 0
    tokens_in: int = 0
    tokens_trained: int = 0
    tokens_filtered: int = 0
    tokens_stale: int = 0
    tokens_dropped_leftover: int = 0
    steps: int = 0


def group_advantages(rewards: np.ndarray, eps: float) -> np.ndarray:
    """(r - mean) / (std + eps) over the whole group (population std)."""
    r = np.asarray(rewards, dtype=np.float64)
    return (r - r.mean()) / (r.std() + eps)


def has_signal(rewards: np.ndarray) -> bool:
    """A group whose rewards are all equal has zero advantage everywhere: no gradient."""
    r = np.asarray(rewards, dtype=np.float64)
    return bool(r.size) and bool(np.ptp(r) > 0)


def is_stale(policy_version: int, current_version: int, max_staleness: int) -> bool:
    return current_version - policy_version > max_staleness


def response_version(r: Response, by: StalenessBy) -> int:
    """The version a response's age is measured by: its oldest token's (what sampled most of a
    response continued across weight updates is old data), or its newest token's."""
    return r.policy_version if by == "oldest" else r.newest_version


def group_version(group: Group, by: StalenessBy) -> int:
    """A group is as old as its oldest response, each measured by `by`."""
    return min(response_version(r, by) for r in group.responses)


def group_pieces(group: Group, eps: float, staleness_by: StalenessBy = "oldest") -> list[Piece]:
    adv = group_advantages(group.rewards, eps)
    prompt = np.asarray(group.prompt_token_ids, dtype=np.int64)
    return [Piece(group.group_id, i, response_version(r, staleness_by), prompt,
                  np.asarray(r.token_ids, dtype=np.int64),
                  np.asarray(r.logprobs, dtype=np.float32), float(adv[i]), 0, len(r.token_ids),
                  r.routed_experts)
            for i, r in enumerate(group.responses) if len(r.token_ids)]


class Batcher:
    """Buffers pieces in arrival order and cuts steps from them.

    mode "tokens" (C3PO): a step holds exactly `token_budget` loss tokens.
    mode "sequences" (grpo/dapo baselines): a step holds `sequences_per_step` whole responses.
    """

    def __init__(self, mode: Literal["tokens", "sequences"], token_budget: int, sequences_per_step: int,
                 max_staleness: int, carry_over: bool, adv_eps: float, dedup_window: int,
                 normaliser: Literal["budget", "tokens", "sequences"] = "budget",
                 staleness_by: StalenessBy = "oldest") -> None:
        self.mode, self.token_budget, self.sequences_per_step = mode, token_budget, sequences_per_step
        self.staleness_by = staleness_by
        self.max_staleness, self.carry_over, self.adv_eps = max_staleness, carry_over, adv_eps
        self.normaliser = normaliser
        self.dedup_window = dedup_window
        self.buffer: deque[Piece] = deque()
        self.counters = Counters()
        self._seen: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: Any) -> "Batcher":
        """From a LearnerConfig: c3po cuts by tokens, the baselines take whole sequences."""
        mode: Literal["tokens", "sequences"] = "tokens" if cfg.loss_type == "c3po" else "sequences"
        norm = {"c3po": "budget", "dapo": "tokens", "grpo": "sequences"}[cfg.loss_type]
        return cls(mode, cfg.token_budget, cfg.sequences_per_step, cfg.max_staleness, cfg.carry_over,
                   cfg.adv_eps, cfg.dedup_window, norm, cfg.staleness_by)  # type: ignore[arg-type]

    # --- input ------------------------------------------------------------------------------
    def add(self, groups: Iterable[Group], current_version: int, stage: str | None = None) -> list[str]:
        """Each group's fate: duplicate, filtered, stale or buffered. `stage`: groups generated for
        another stage (a services run's leftovers from the stage before) are counted stale: their
        data belongs to a policy objective no longer trained."""
        fates = []
        for g in groups:
            if g.group_id in self._seen:  # a replayed stream entry: already counted and used
                self.counters.groups_duplicate += 1
                fates.append("duplicate")
                continue
            self._remember(g.group_id)
            n_tok = sum(len(r.token_ids) for r in g.responses)
            c = self.counters
            c.groups_in += 1
            c.tokens_in += n_tok
            if not has_signal(g.rewards):
                c.groups_filtered += 1
                c.tokens_filtered += n_tok
                fates.append("filtered")
            elif (is_stale(group_version(g, self.staleness_by), current_version, self.max_staleness)
                  or (stage is not None and g.stage != stage)):
                c.groups_stale += 1
                c.tokens_stale += n_tok
                fates.append("stale")
            else:
                self.buffer.extend(group_pieces(g, self.adv_eps, self.staleness_by))
                fates.append("buffered")
        return fates

    def _remember(self, group_id: str) -> None:
        self._seen[group_id] = None
        while len(self._seen) > self.dedup_window:
            self._seen.popitem(last=False)

    # --- output -----------------------------------------------------------------------------
    @property
    def buffered_tokens(self) -> int:
        return sum(p.num_tokens for p in self.buffer)

    def drop_stale(self, current_version: int, everything: bool = False) -> None:
        """Carried pieces age too: drop those now beyond the bound (`everything`: all of them, at a
        services run's stage change)."""
        keep: deque[Piece] = deque()
        stale_groups: set[str] = set()
        for p in self.buffer:
            if everything or is_stale(p.policy_version, current_version, self.max_staleness):
                self.counters.tokens_stale += p.num_tokens
                stale_groups.add(p.group_id)
            else:
                keep.append(p)
        self.counters.groups_stale += len(stale_groups)
        self.buffer = keep

    def ready(self, current_version: int) -> bool:
        self.drop_stale(current_version)
        if self.mode == "tokens":
            return self.buffered_tokens >= self.token_budget
        return len(self.buffer) >= self.sequences_per_step

    def next_step(self, current_version: int, partial: bool = False) -> Step | None:
        """Cut the next step, or None if not enough data (unless `partial`: flush what there is)."""
        if not self.ready(current_version) and not (partial and self.buffer):
            return None
        taken: list[Piece] = []
        if self.mode == "tokens":
            need = self.token_budget
            while need and self.buffer:
                p = self.buffer.popleft()
                if p.num_tokens > need:
                    p, rest = p.split(need)
                    if self.carry_over:
                        self.buffer.appendleft(rest)
                    else:
                        self.counters.tokens_dropped_leftover += rest.num_tokens
                taken.append(p)
                need -= p.num_tokens
        else:
            while len(taken) < self.sequences_per_step and self.buffer:
                taken.append(self.buffer.popleft())
        step = Step(taken, current_version, self.normaliser, self.token_budget,
                    self.sequences_per_step)
        self.counters.tokens_trained += step.num_tokens
        self.counters.steps += 1
        return step

    def accounting_balances(self) -> bool:
        c = self.counters
        return c.tokens_in == (c.tokens_trained + c.tokens_filtered + c.tokens_stale
                               + c.tokens_dropped_leftover + self.buffered_tokens)

    # --- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"buffer": [asdict(p) for p in self.buffer], "counters": asdict(self.counters),
                "seen": list(self._seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = deque(Piece(**p) for p in state["buffer"])
        self.counters = Counters(**state["counters"])
        self._seen = OrderedDict.fromkeys(state["seen"])
