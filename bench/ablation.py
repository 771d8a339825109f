"""The MoE-RL features one at a time against the default run, from the same start checkpoint with the
same seeds: partial rollouts (`rollout.inflight_policy: continue`), routing replay
(`learner.router_replay: r3`), two-sided mismatch masking (`learner.mismatch: icepop`) and the
pass-rate-aware prompt feed (`feed: pass_rate` on every stage), and all of them together.

    python -m bench.ablation --model SFT_CHECKPOINT [--config CFG] [--variants default,continue,...]

Per variant and stage: steps per minute of the stage's RL (its evals excluded), the share of
generated groups filtered (all rewards equal), and the held-out gain over the start checkpoint,
paired by item (greedy and sampled pass@1, ± the 95 % interval).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from protocol.config import load_config
from protocol.config.train import DEFAULT_CONFIG, TrainConfig
from recipe.driver import train


def _continue(cfg: TrainConfig) -> None:
    cfg.rollout.inflight_policy = "continue"


def _r3(cfg: TrainConfig) -> None:
    cfg.rollout.record_routing = True
    cfg.learner.router_replay = "r3"


def _icepop(cfg: TrainConfig) -> None:
    cfg.learner.mismatch = "icepop"


def _feed(cfg: TrainConfig) -> None:
    for stage in cfg.stages:
        stage.feed = "pass_rate"


VARIANTS: dict[str, list[Callable[[TrainConfig], None]]] = {
    "default": [], "continue": [_continue], "r3": [_r3], "icepop": [_icepop], "feed": [_feed],
    "all": [_continue, _r3, _icepop, _feed]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="start checkpoint shared by every variant")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: the demo)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="runs/bench-ablation", help="output folder")
    args = ap.parse_args()
    console = Console()
    out = Path(args.out)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    rows: dict[str, list[dict]] = {}
    for name in names:
        cfg: TrainConfig = load_config(args.config, model=TrainConfig)
        cfg.run.name, cfg.run.output_dir = name, str(out)
        cfg.model.path, cfg.sft.max_minutes, cfg.sft.max_steps = args.model, 0, 0
        for change in VARIANTS[name]:
            change(cfg)
        cfg = TrainConfig.model_validate(cfg.model_dump(by_alias=True))  # the variant's own checks
        train(cfg, console)
        metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        rows[name] = []
        for s in json.loads((out / name / "summary.json").read_text()):
            steps = [m for m in metrics if m.get("stage") == s["stage"] and "tokens" in m]
            rl_min = (steps[-1]["wall_s"] - steps[0]["wall_s"]) / 60
            a = s["accounting"]
            rows[name].append({"stage": s["stage"], "steps_per_min": (len(steps) - 1) / max(rl_min, 1e-9),
                               "filtered": a["groups_filtered"] / max(a["groups_in"], 1),
                               "greedy": s["gain_vs_sft_start"]["after_greedy"],
                               "sampled": s["gain_vs_sft_start"]["after_sampled"]})
        (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    table = Table(title="ablation: same start checkpoint and seeds; gain = after the stage minus the start, "
                        "paired by item, ± 95% interval")
    for col in ("variant", "stage", "steps/min", "vs default", "filtered", "greedy gain", "sampled gain"):
        table.add_column(col, justify="right")
    base = {r["stage"]: r for r in rows.get("default", [])}
    for name, stages in rows.items():
        for r in stages:
            ref = base.get(r["stage"])
            table.add_row(name, r["stage"], f"{r['steps_per_min']:.1f}",
                          f"{r['steps_per_min'] / ref['steps_per_min']:.2f}x" if ref else "-",
                          f"{r['filtered']:.0%}", f"{r['greedy']['mean']:+.3f} ± {r['greedy']['half_width']:.3f}",
                          f"{r['sampled']['mean']:+.3f} ± {r['sampled']['half_width']:.3f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
