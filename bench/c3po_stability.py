"""C3PO vs GRPO vs DAPO in miniature: same tiny MoE, same stream of groups, one run.

C3PO steps hold exactly token_budget response tokens and divide the token-loss sum by that
constant; the baselines take a fixed number of whole responses per step (sized so a step holds
about the same tokens on average) and normalise per sequence (GRPO) or by the step's tokens
(DAPO). The groups are synthetic (random tokens, heavy-tailed lengths, random binary rewards:
see bench/_learner_data.py), not sampled from the model. Gradient clipping is off so the norms
are the raw ones.

    .venv/bin/python -m bench.c3po_stability
"""

from __future__ import annotations

import statistics

import torch
from rich.console import Console
from rich.table import Table

from bench._learner_data import stream, tiny_model
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig

STEPS = 12
BUDGET = 1024


def cv(xs: list[float]) -> float:
    return statistics.pstdev(xs) / statistics.mean(xs)


def main() -> None:
    model = tiny_model()
    groups = stream(60, seed=1)
    mean_len = statistics.mean(len(r.token_ids) for g in groups for r in g.responses)
    per_step = max(1, round(BUDGET / mean_len))
    rows = {}
    for method in ("grpo", "dapo", "c3po"):
        torch.manual_seed(0)
        cfg = LearnerConfig(loss_type=method, token_budget=BUDGET, sequences_per_step=per_step,
                            max_tokens_per_microbatch=1024, lr=1e-4, grad_clip=None, max_staleness=1000)
        learner = Learner(cfg, str(model))
        learner.add_groups(groups)
        ms = learner.train_ready(max_steps=STEPS)
        rows[method] = ms
    table = Table(title=f"C3PO stability: {STEPS} steps each, tiny Qwen3-MoE, budget {BUDGET} tokens "
                        f"(baselines: {per_step} sequences/step, mean length {mean_len:.0f})")
    for col in ("method", "tokens/step mean", "tokens/step CV", "grad-norm mean", "grad-norm CV",
                "step-time mean s", "step-time CV", "grad-norm CV vs c3po"):
        table.add_column(col, justify="right")
    base = cv([m["grad_norm"] for m in rows["c3po"]])
    for method, ms in rows.items():
        tok = [m["tokens"] for m in ms]
        gn = [m["grad_norm"] for m in ms]
        st = [m["step_time_s"] for m in ms[1:]]  # the first step pays one-off allocation
        table.add_row(method, f"{statistics.mean(tok):.0f}", f"{cv(tok):.3f}", f"{statistics.mean(gn):.4f}",
                      f"{cv(gn):.3f}", f"{statistics.mean(st):.3f}", f"{cv(st):.3f}", f"{cv(gn) / base:.2f}x")
    Console(width=150).print(table)
    Console(width=150).print("per-step tokens: " + "; ".join(
        f"{k}: {[int(m['tokens']) for m in v]}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
