"""Entropy-based choice of the SFT checkpoint RL starts from (Ring-lite).

Each checkpoint samples its own responses (T=1) on a probe prompt set; its score is the mean
token entropy of its next-token distribution over those sampled tokens. Held-out greedy accuracy
is measured alongside. The pick is the best-accuracy checkpoint inside a target entropy band:
checkpoints below the band have collapsed and explore too little for RL to help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from protocol.config.selection import SelectionConfig
from recipe.tasks import TaskItem
from recipe.verdicts import correct
from reward_service.scorer import Scorer


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int
    entropy_sum: float
    """Sum over this response's tokens of the entropy (nats) of the model's next-token distribution."""


def load_policy(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    # Eager experts decode ~2x faster than grouped_mm on CPU for tiny MoEs (measured here).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, experts_implementation="eager")
    model.eval()
    return model, tok


@torch.no_grad()
def sample(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Sequence[str], *,
           n: int = 1, temperature: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64,
           seed: int = 0) -> list[list[Sample]]:
    """n responses per prompt (one greedy response when temperature == 0), with per-token entropies."""
    torch.manual_seed(seed)
    out: list[list[Sample]] = []
    greedy = temperature == 0
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        # top_k=0 / top_p=1 switch off transformers' default top-k 50: sample the full distribution.
        knobs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0,
                                                     "top_p": 1.0, "num_return_sequences": n}
        gen = model.generate(
            **enc, **knobs, max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id, pad_token_id=pad_id, return_dict_in_generate=True,
            output_logits=True, output_router_logits=False)
        new = gen.sequences[:, enc["input_ids"].shape[1]:]
        logp = torch.stack(gen.logits, dim=1).float().log_softmax(-1)
        ent = -(logp.exp() * logp).sum(-1)
        # Count tokens up to and including the first EOS; the padding after it is not sampled.
        is_eos = new == tok.eos_token_id
        after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
        valid = ~after_eos
        per_prompt = 1 if greedy else n
        for i in range(0, new.shape[0], per_prompt):
            group = []
            for j in range(i, i + per_prompt):
                keep = valid[j]
                text = tok.decode(new[j][keep], skip_special_tokens=True)
                group.append(Sample(text, int(keep.sum()), float(ent[j][keep].sum())))
            out.append(group)
    return out


def mean_entropy(samples: Sequence[Sequence[Sample]]) -> float:
    """Token-weighted mean entropy (nats/token) over all samples."""
    tokens = sum(s.n_tokens for g in samples for s in g)
    return sum(s.entropy_sum for g in samples for s in g) / tokens if tokens else math.nan


@dataclass(frozen=True)
class CheckpointStats:
    path: str
    entropy: float
    accuracy: float
    mean_tokens: float


def measure(path: str | Path, probe: Sequence[TaskItem], held_out: Sequence[TaskItem],
            cfg: SelectionConfig, scorer: Scorer | None = None) -> CheckpointStats:
    """Entropy on its own T=1 samples over `probe`, greedy accuracy on `held_out` (scored by `scorer`,
    which only an empty `held_out` may leave out: accuracy is then NaN)."""
    if held_out and scorer is None:
        raise ValueError("held-out accuracy needs a Scorer")
    model, tok = load_policy(path)
    samples = sample(model, tok, [it.prompt for it in probe], n=cfg.samples_per_prompt, temperature=1.0,
                     max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)
    accuracy = math.nan
    if held_out and scorer is not None:
        greedy = sample(model, tok, [it.prompt for it in held_out], temperature=0.0,
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        right = correct(scorer, held_out, [g[0].text for g in greedy])
        accuracy = sum(right) / len(right)
    tokens = [s.n_tokens for g in samples for s in g]
    return CheckpointStats(str(path), mean_entropy(samples), accuracy, sum(tokens) / len(tokens))


def band_distance(entropy: float, lo: float, hi: float) -> float:
    return max(lo - entropy, entropy - hi, 0.0)


def choose(stats: Sequence[CheckpointStats], lo: float, hi: float) -> tuple[CheckpointStats, str]:
    """Best accuracy inside [lo, hi] (ties: higher entropy); none inside: the closest to the band."""
    if not stats:
        raise ValueError("no checkpoints to choose from")
    if lo > hi:
        raise ValueError(f"entropy band is empty: lo {lo} > hi {hi}")

    def acc(s: CheckpointStats) -> float:
        return -1.0 if math.isnan(s.accuracy) else s.accuracy

    inside = [s for s in stats if band_distance(s.entropy, lo, hi) == 0]
    if inside:
        best = max(inside, key=lambda s: (acc(s), s.entropy))
        return best, (f"{len(inside)} of {len(stats)} checkpoints have entropy in [{lo:g}, {hi:g}]; "
                      f"{Path(best.path).name} has the best held-out accuracy among them ({best.accuracy:.3f})")
    best = min(stats, key=lambda s: (band_distance(s.entropy, lo, hi), -acc(s)))
    side = "above" if best.entropy > hi else "below"
    return best, (f"no checkpoint has entropy in [{lo:g}, {hi:g}]; {Path(best.path).name} is closest "
                  f"({best.entropy:.3f}, {side} the band)")


def _short(path: str) -> str:
    """Parent/name: enough to tell checkpoints of one run apart without filling the table."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def selection_table(stats: Sequence[CheckpointStats], chosen: CheckpointStats | None, lo: float,
                    hi: float) -> Table:
    table = Table(title=f"checkpoint selection (entropy band [{lo:g}, {hi:g}])")
    table.add_column("checkpoint", no_wrap=True, min_width=max((len(_short(s.path)) for s in stats), default=10))
    for col in ("entropy", "held-out acc", "tokens", "in band", "chosen"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in stats:
        table.add_row(_short(s.path), f"{s.entropy:.3f}", "-" if math.isnan(s.accuracy) else f"{s.accuracy:.3f}",
                      f"{s.mean_tokens:.1f}", "yes" if band_distance(s.entropy, lo, hi) == 0 else "no",
                      "<-" if chosen is not None and s.path == chosen.path else "")
    return table


def select_checkpoint(paths: Sequence[str | Path], probe: Sequence[TaskItem], held_out: Sequence[TaskItem],
                      cfg: SelectionConfig, console: Console | None = None,
                      scorer: Scorer | None = None) -> tuple[CheckpointStats, list[CheckpointStats]]:
    """Measure every checkpoint, print the table and the reason; return (chosen, all stats)."""
    console = console or Console()
    stats = []
    for p in paths:
        stats.append(measure(p, probe, held_out, cfg, scorer))
        console.print(f"measured {p}: entropy {stats[-1].entropy:.3f}, held-out acc {stats[-1].accuracy:.3f}",
                      soft_wrap=True)
    chosen, reason = choose(stats, cfg.entropy_lo, cfg.entropy_hi)
    console.print(selection_table(stats, chosen, cfg.entropy_lo, cfg.entropy_hi))
    console.print(f"chose {chosen.path}: {reason}", soft_wrap=True)
    return chosen, stats
