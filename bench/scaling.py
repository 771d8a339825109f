"""Engines x learner ranks on the same machine, config and start checkpoint: what adding an engine
(`cluster.engines`) or a learner rank (`learner.ranks`, FSDP2) does to a stage's throughput, against
the one-engine, one-rank run a user has without them.

    python -m bench.scaling [--config CFG] [--steps 12] [--model SFT_CHECKPOINT] [--layouts 1x1,2x1,1x2,2x2]
    python -m bench.scaling --redis        # bytes per group and step at the recipe's sizes, and what
                                           # one Redis here moves: where it becomes the limit

Each layout runs the config's first stage for --steps steps (held-out measures shrunk to a few
items, no in-stage curve). Seconds per step are steady-state: from the first to the last step, so
actor start-up and the stage drain are left out. On a machine with fewer cores than actors the
actors share cores (engine_cpus and rank_num_cpus are set to fit the local Ray's CPUs): the table
then shows the cost of the collectives, not a speed-up; give each engine and rank its own device to
see one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import redis
from rich.console import Console
from rich.table import Table

from bench.common import redis_server, start_checkpoint
from protocol.codec import encode_group
from protocol.config import load_config
from protocol.config.train import DEFAULT_CONFIG, TrainConfig
from protocol.schema import Group, MathReference, Response, TaskKind
from recipe.driver import train


def layout(text: str) -> tuple[int, int]:
    engines, ranks = text.split("x")
    return int(engines), int(ranks)


def recipe_group(tokens: int, n: int, routed: tuple[int, int] | None, rng: np.random.Generator) -> Group:
    """A scored group at the recipe's sizes: n responses of `tokens` each, 2,048 prompt tokens;
    with `routed` = (MoE layers, top-k), each response carries its routing for R3."""
    prompt = rng.integers(0, 150_000, 2048)
    responses = []
    for _ in range(n):
        rows = 2048 + tokens - 1
        experts = rng.integers(0, 128, (rows, routed[0], routed[1])) if routed else None
        responses.append(Response(token_ids=rng.integers(0, 150_000, tokens), logprobs=-rng.random(tokens),
                                  policy_version=0, reward=float(rng.integers(0, 2)), routed_experts=experts))
    return Group(prompt_id="p", task=TaskKind.math, prompt_token_ids=prompt, reference=MathReference(answer="1"),
                 responses=responses)


def redis_projection(console: Console) -> None:
    """Bytes per group and per optimiser step at the recipe's sizes, and this machine's Redis rate."""
    rng = np.random.default_rng(0)
    budget, n = 409_600, 16
    table = Table(title=f"Redis at the recipe's sizes: {n} responses per group, a {budget:,}-token step")
    for col in ("response tokens", "routing (R3)", "bytes / group", "groups / step", "MB / step",
                "XADD+XREADGROUP+XACK here", "steps/s one Redis carries"):
        table.add_column(col, justify="right")
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        for tokens, routed in ((4096, None), (32_768, None), (4096, (48, 8))):
            group = recipe_group(tokens, n, routed, rng)
            payload = encode_group(group)
            groups_per_step = budget / (n * tokens)
            reps = max(4, min(64, (256 << 20) // len(payload)))
            client.delete("bench:scaling")
            t = time.perf_counter()
            for _ in range(reps):  # the whole path of one group: rollout writes, learner reads and acks
                client.xadd("bench:scaling", {"g": payload})
            client.xgroup_create("bench:scaling", "learner", id="0")
            read = client.xreadgroup("learner", "c", {"bench:scaling": ">"}, count=reps)
            client.xack("bench:scaling", "learner", *[e[0] for e in read[0][1]])
            rate = reps * len(payload) / (time.perf_counter() - t)
            client.delete("bench:scaling")
            step_bytes = groups_per_step * len(payload)
            table.add_row(f"{tokens:,}", f"{routed[0]} layers x top-{routed[1]}" if routed else "-",
                          f"{len(payload) / 2**20:.1f} MiB", f"{groups_per_step:.1f}", f"{step_bytes / 1e6:.0f}",
                          f"{rate / 1e6:.0f} MB/s", f"{rate / step_bytes:.1f}")
    Console(width=200).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: the demo)")
    ap.add_argument("--steps", type=int, default=12, help="RL steps per layout")
    ap.add_argument("--model", default="", help="start checkpoint; empty: distil one first")
    ap.add_argument("--sft-steps", type=int, default=1200, help="SFT steps when --model is empty")
    ap.add_argument("--layouts", default="1x1,2x1,1x2,2x2", help="ENGINESxRANKS, comma-separated")
    ap.add_argument("--out", default="runs/bench-scaling", help="output folder")
    ap.add_argument("--redis", action="store_true", help="only the Redis projection at the recipe's sizes")
    args = ap.parse_args()
    console = Console()
    if args.redis:
        redis_projection(console)
        return
    out = Path(args.out)
    base: TrainConfig = load_config(args.config, model=TrainConfig)
    start = args.model or start_checkpoint(base, out / "sft", console, args.sft_steps)
    results: dict[tuple[int, int], dict[str, float]] = {}
    for engines, ranks in map(layout, args.layouts.split(",")):
        cfg = base.model_copy(deep=True)
        name = f"e{engines}-r{ranks}"
        cfg.run.name, cfg.run.output_dir = name, str(out)
        cfg.model.path, cfg.sft.max_minutes, cfg.sft.max_steps = start, 0, 0
        cfg.stages = [cfg.stages[0].model_copy(update={"steps": args.steps})]
        cfg.eval_size, cfg.eval_samples, cfg.eval_every = 10, 1, 0
        actors = engines + ranks  # each asks for an equal share of the local Ray's CPUs
        share = cfg.cluster.num_cpus / actors
        cfg.cluster = cfg.cluster.model_copy(update={"engines": engines, "engine_cpus": share})
        cfg.learner = cfg.learner.model_copy(update={"ranks": ranks, "rank_num_cpus": share})
        t = time.monotonic()
        train(cfg, console)
        wall = time.monotonic() - t
        rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "tokens" in r]
        results[(engines, ranks)] = {
            "step_s": (steps[-1]["wall_s"] - steps[0]["wall_s"]) / max(len(steps) - 1, 1),
            "gen_tok_s": sum(r["rollout_tok_s"] for r in steps[1:]) / max(len(steps) - 1, 1),
            "train_s": sum(r["step_time_s"] for r in steps) / len(steps),
            "wall_s": wall}
    base_row = results.get((1, 1))
    table = Table(title=f"engines x learner ranks: {args.steps} steps of stage {base.stages[0].name}, "
                        f"{base.stages[0].token_budget} tokens each, same start checkpoint")
    for col in ("engines", "ranks", "s/step", "vs 1x1", "gen tok/s", "vs 1x1", "learner step s", "vs 1x1", "run wall s"):
        table.add_column(col, justify="right")
    def ratio(r: dict[str, float], key: str, inverse: bool = False) -> str:
        if base_row is None:
            return "-"
        return f"{(base_row[key] / r[key]) if inverse else (r[key] / base_row[key]):.2f}x"

    for (engines, ranks), r in results.items():
        table.add_row(str(engines), str(ranks), f"{r['step_s']:.2f}", ratio(r, "step_s", inverse=True),
                      f"{r['gen_tok_s']:.0f}", ratio(r, "gen_tok_s"), f"{r['train_s']:.2f}",
                      ratio(r, "train_s", inverse=True), f"{r['wall_s']:.0f}")
    Console(width=200).print(table)
    console.print("speed-up columns: >1x is faster than one engine and one rank")


if __name__ == "__main__":
    main()
