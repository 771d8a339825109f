"""Asynchronous vs synchronous RL on the same config, machine and start checkpoint, in one run.

Async: the engine keeps generating while the learner trains and loads each new version between
engine steps. Sync: generate a round, score it, train, publish — in turn. Both train exactly the
same token budget per step (C3PO), so wall time per step compares like with like.

    python -m bench.async_vs_sync [--config CFG] [--steps 20] [--model SFT_CHECKPOINT]
Without --model it first distils the tiny model for --sft-minutes (shared by both modes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from actors.driver import distil, prepare_model, train
from actors.train_config import DEFAULT_CONFIG, TrainConfig
from protocol.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: the demo)")
    ap.add_argument("--steps", type=int, default=20, help="RL steps per stage in each mode")
    ap.add_argument("--model", default="", help="start checkpoint; empty: distil one first")
    ap.add_argument("--sft-minutes", type=float, default=4.0, help="SFT length when --model is empty")
    ap.add_argument("--out", default="runs/bench-async-vs-sync", help="output folder")
    args = ap.parse_args()
    console = Console()
    out = Path(args.out)
    base: TrainConfig = load_config(args.config, model=TrainConfig)
    start = args.model
    if not start:
        base.sft.max_minutes = args.sft_minutes
        base.sft.save_every_minutes = 0
        start = distil(base, prepare_model(base, out / "sft", console), out / "sft", console)[-1]
    results = {}
    for asynchronous in (True, False):
        mode = "async" if asynchronous else "sync"
        cfg = base.model_copy(deep=True)
        cfg.asynchronous = asynchronous
        cfg.run.name, cfg.run.output_dir = mode, str(out)
        cfg.model.path, cfg.sft.max_minutes, cfg.sft.max_steps = start, 0, 0
        for stage in cfg.stages:
            stage.steps = args.steps
        t = time.monotonic()
        summaries = train(cfg, console)
        wall = time.monotonic() - t
        rows = [json.loads(x) for x in (out / mode / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "tokens" in r]
        results[mode] = {"rl_s": sum(s.seconds for s in summaries), "wall_s": wall,
                         "step_s": sum(r["step_wall_s"] for r in steps) / len(steps),
                         "accuracy": {s.name: (s.before, s.after) for s in summaries},
                         "staleness": max(r["staleness_max"] for r in steps)}
    table = Table(title=f"async vs sync: {args.steps} steps per stage, same start checkpoint, same budget")
    for col in ("mode", "s/step (driver)", f"RL wall to {args.steps}/stage (s)", "speed-up",
                "max staleness", *[f"{n} acc before→after" for n in results["async"]["accuracy"]]):
        table.add_column(col, justify="right")
    for mode, r in results.items():
        table.add_row(mode, f"{r['step_s']:.2f}", f"{r['rl_s']:.0f}",
                      f"{results['sync']['rl_s'] / r['rl_s']:.2f}x", str(r["staleness"]),
                      *[f"{b:.2f}→{a:.2f}" for b, a in r["accuracy"].values()])
    console.print(table)


if __name__ == "__main__":
    main()
