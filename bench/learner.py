"""Learner throughput: packed micro-batches vs naive padded ones, same model, same steps, one run.

All layouts train the same C3PO steps. padded (the naive baseline): arrival order, rows
right-padded to the longest sequence of their micro-batch. packed: the same micro-batches
concatenated into one row (position ids restart per sequence). bucketed: sequences sorted by
length, padded per bucket. Runs are
interleaved (packed, padded, packed, ...) so machine load hits both alike; median step time.

    .venv/bin/python -m bench.learner
"""

from __future__ import annotations

import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from bench._learner_data import stream, tiny_model
from learner.batcher import Batcher
from learner.packing import LAYOUTS, microbatches
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig

STEPS = 4
CFG = LearnerConfig(token_budget=2048, max_tokens_per_microbatch=1024, lr=1e-4, max_staleness=1000)


def main() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    batcher = Batcher.from_config(CFG)
    batcher.add(stream(40), 0)
    steps = [batcher.next_step(0) for _ in range(STEPS)]
    learner = Learner(CFG, str(model))
    times: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    tokens: dict[str, list[int]] = {k: [] for k in LAYOUTS}
    for step in steps:
        for layout in LAYOUTS:
            learner.layout = layout
            tokens[layout].append(sum(mb.input_ids.numel() for mb in microbatches(step, CFG.max_tokens_per_microbatch, layout)))
            t0 = time.perf_counter()
            learner.train_step(step)
            times[layout].append(time.perf_counter() - t0)
    table = Table(title=f"learner throughput: {STEPS} C3PO steps x {CFG.token_budget} response tokens, "
                        f"tiny Qwen3-MoE, fp32, {torch.get_num_threads()} threads")
    for col in ("layout", "median step s", "trained tokens/s", "forward tokens/step", "speed-up"):
        table.add_column(col, justify="right")
    med = {k: statistics.median(v) for k, v in times.items()}
    for layout in ("padded", "packed", "bucketed"):
        table.add_row(layout, f"{med[layout]:.3f}", f"{CFG.token_budget / med[layout]:,.0f}",
                      f"{statistics.mean(tokens[layout]):,.0f}", f"{med['padded'] / med[layout]:.2f}x")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
