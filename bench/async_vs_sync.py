"""Asynchronous vs synchronous RL on the same config, machine and start checkpoint, in one run.

Async: the engine keeps generating while the learner trains and loads each new version between
engine steps. Sync: generate a round, score it, train, publish — in turn. Both train exactly the
same token budget per step (C3PO), so wall time per step compares like with like.

The sync run also times each part of a step alone: generation (rounds until a budget of mixed
groups is in, scoring and weight loading included) and training (the step plus its publish). No
overlap of the two can beat max(generation, training) per step — the async run's "overlap limit";
its ratio to the async step time says how much of the overlap the pipeline achieves.

    python -m bench.async_vs_sync [--config CFG] [--steps 20] [--model SFT_CHECKPOINT]
Without --model it first distils the tiny model for --sft-steps (shared by both modes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import start_checkpoint
from protocol.config import load_config
from protocol.config.train import DEFAULT_CONFIG, TrainConfig
from recipe.driver import train
from recipe.evaluate import paired_gain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: the demo)")
    ap.add_argument("--steps", type=int, default=20, help="RL steps per stage in each mode")
    ap.add_argument("--model", default="", help="start checkpoint; empty: distil one first")
    ap.add_argument("--sft-steps", type=int, default=2400, help="SFT steps when --model is empty")
    ap.add_argument("--eval-size", type=int, default=None,
                    help="held-out items per source in each mode's evals (default: the config's)")
    ap.add_argument("--out", default="runs/bench-async-vs-sync", help="output folder")
    args = ap.parse_args()
    console = Console()
    out = Path(args.out)
    base: TrainConfig = load_config(args.config, model=TrainConfig)
    start = args.model
    if not start:
        start = start_checkpoint(base, out / "sft", console, args.sft_steps)
    results = {}
    for asynchronous in (True, False):
        mode = "async" if asynchronous else "sync"
        cfg = base.model_copy(deep=True)
        cfg.asynchronous = asynchronous
        cfg.run.name, cfg.run.output_dir = mode, str(out)
        cfg.model.path, cfg.sft.max_minutes, cfg.sft.max_steps = start, 0, 0
        if args.eval_size is not None:
            cfg.eval_size = args.eval_size
        for stage in cfg.stages:
            stage.steps = args.steps
        t = time.monotonic()
        summaries = train(cfg, console)
        wall = time.monotonic() - t
        rows = [json.loads(x) for x in (out / mode / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "tokens" in r]
        # Steady-state seconds per step: between the first and last step of each stage, so the
        # engine start, held-out evals and stage drains (the same in both modes) are left out.
        per_stage, limit = {}, {}
        for name in [st.name for st in cfg.stages]:
            s = [r for r in steps if r["stage"] == name]
            per_stage[name] = (s[-1]["wall_s"] - s[0]["wall_s"]) / max(len(s) - 1, 1)
            train_s = [r["train_call_s"] + r["publish_s"] for r in s]
            gen_s = [r["step_wall_s"] - t for r, t in zip(s, train_s)]
            limit[name] = max(sum(gen_s) / len(s), sum(train_s) / len(s))
        results[mode] = {"rl_s": sum(s.seconds for s in summaries), "wall_s": wall,
                         "step_s": per_stage, "limit_s": limit,
                         "accuracy": {s.name: (s.before, s.after) for s in summaries},
                         "staleness": max(r["staleness_max"] for r in steps)}
    table = Table(title=f"async vs sync: {args.steps} steps per stage, same start checkpoint, same budget")
    names = list(results["async"]["step_s"])
    for col in ("mode", *[f"{n} s/step" for n in names], *[f"{n} speed-up" for n in names],
                *[f"{n} overlap limit s/step (from sync) / reached" for n in names],
                "stages wall incl. evals (s)", "max staleness",
                *[f"{n} acc before→after (greedy / sampled)" for n in names]):
        table.add_column(col, justify="right")
    sync, limit = results["sync"]["step_s"], results["sync"]["limit_s"]
    for mode, r in results.items():
        table.add_row(mode, *[f"{r['step_s'][n]:.2f}" for n in names],
                      *[f"{sync[n] / r['step_s'][n]:.2f}x" for n in names],
                      *[f"{limit[n]:.2f} / {limit[n] / r['step_s'][n]:.2f}" if mode == "async" else "-"
                        for n in names], f"{r['rl_s']:.0f}",
                      str(r["staleness"]),
                      *[f"{b.greedy_accuracy():.2f}→{a.greedy_accuracy():.2f} / "
                        f"{b.sampled_accuracy():.2f}→{a.sampled_accuracy():.2f}" for b, a in r["accuracy"].values()])
    wide = Console(width=200)  # wide enough for every column when logged to a file
    wide.print(table)
    for n in names:  # both modes are scored on the same held-out items: compare them item by item
        a, s = results["async"]["accuracy"][n][1], results["sync"]["accuracy"][n][1]
        wide.print(f"{n}: async minus sync after the stage, paired by item (± 95% interval): greedy "
                   f"{paired_gain(s, a)}, sampled {paired_gain(s, a, sampled=True)}")


if __name__ == "__main__":
    main()
