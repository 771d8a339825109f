"""Does a killed and resumed run end where an uninterrupted one does? A run of the config is
SIGKILLed (driver, Ray, Redis and every actor at once) at a chosen step of a chosen stage, resumed
with `ringrl train --resume`, and its final weights are scored on every stage's held-out items
against the final weights of uninterrupted runs of the same config and start — paired by item, with
two uninterrupted runs side by side as the yardstick of run-to-run noise (RL here is not
bit-reproducible: the asynchronous arrival order decides each step's groups).

    python -m bench.resume --model SFT_CHECKPOINT [--config CFG] [--kill-at code:25]
                           [--against RUN_DIR RUN_DIR]

Without --against it runs the two uninterrupted runs itself (each as long as the killed one).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from protocol.config import load_config
from protocol.config.train import DEFAULT_CONFIG, TrainConfig

BIN = Path(sys.executable).parent


def local_env() -> dict[str, str]:
    """This environment without RAY_ADDRESS: each run starts its own local Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def kill_session(sid: int, run: Path) -> None:
    """SIGKILL a driver's whole session (Ray's processes and workers) and the run's Redis."""
    for _ in range(3):  # a worker forked while the first sweep ran is caught by the next
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                if os.getsid(pid) == sid or str(run) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
        time.sleep(0.5)


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def killed_and_resumed(config: Path, run: Path, stage: str, step: int, console: Console) -> float:
    """Run `config`, SIGKILL it once `stage` trained `step` steps, resume it; wall seconds of both."""
    env = local_env()
    t = time.monotonic()
    first = subprocess.Popen([str(BIN / "ringrl"), "train", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        while not any(r.get("stage") == stage and r.get("stage_step", 0) >= step and "tokens" in r
                      for r in metrics(run)):
            if first.poll() is not None:
                raise SystemExit(f"error: the run ended (exit {first.returncode}) before {stage} step {step}")
            time.sleep(0.5)
    finally:
        kill_session(first.pid, run)
        first.wait(30)
    console.print(f"killed at {stage} step {step} after {time.monotonic() - t:.0f} s; resuming")
    r = subprocess.run([str(BIN / "ringrl"), "train", "--resume", str(run)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: --resume failed: {r.stderr[-2000:]}")
    return time.monotonic() - t


def uninterrupted(config: Path) -> None:
    r = subprocess.run([str(BIN / "ringrl"), "train", str(config)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, env=local_env())
    if r.returncode != 0:
        raise SystemExit(f"error: the uninterrupted run failed: {r.stderr[-2000:]}")


def final_weights(run: Path, last_stage: str) -> str:
    path = run / "stages" / last_stage / "final"
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: {run}: no final weights of stage {last_stage} (not a finished run?)")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="start checkpoint shared by every run")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: the demo)")
    ap.add_argument("--kill-at", default="code:25", help="STAGE:STEP the killed run is killed after")
    ap.add_argument("--against", nargs=2, type=Path, default=None,
                    help="two finished uninterrupted runs of this config and start, instead of running them")
    ap.add_argument("--out", default="runs/bench-resume", help="output folder")
    args = ap.parse_args()
    console = Console(width=160)
    stage, _, step = args.kill_at.partition(":")
    out = Path(args.out).resolve()
    base: TrainConfig = load_config(args.config, model=TrainConfig)
    if stage not in [s.name for s in base.stages] or not step.isdigit():
        raise SystemExit(f"error: --kill-at {args.kill_at}: want STAGE:STEP with a stage of the config")

    def config_for(name: str) -> Path:
        cfg = base.model_copy(deep=True)
        cfg.run.name, cfg.run.output_dir = name, str(out)
        cfg.model.path, cfg.sft.max_minutes, cfg.sft.max_steps = args.model, 0, 0
        path = out / f"{name}.yaml"
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
        return path

    seconds = killed_and_resumed(config_for("resumed"), out / "resumed", stage, int(step), console)
    against = args.against
    if against is None:
        against = [out / "uninterrupted-1", out / "uninterrupted-2"]
        for run in against:
            uninterrupted(config_for(run.name))
    last = base.stages[-1].name
    runs = {"uninterrupted 1": final_weights(against[0], last), "uninterrupted 2": final_weights(against[1], last),
            "resumed": final_weights(out / "resumed", last)}

    from recipe.driver import held_out
    from recipe.evaluate import paired_gain
    from reward_service.scorer import Scorer

    table = Table(title=f"final weights on every stage's held-out items ({base.eval_size} per source, "
                        f"greedy and sampled pass@1 at T=1 x {base.eval_samples}); ± = 95% interval of the "
                        f"paired per-item difference; the resumed run was killed after {stage} step {step}")
    for col in ("stage", *runs, "uninterrupted 2 − 1 (noise)", "resumed − 1", "resumed − 2"):
        table.add_column(col, justify="right")
    rows = []
    with closing(Scorer(base.reward)) as scorer:
        for s in base.stages:
            got = {name: held_out(base, path, s, scorer) for name, path in runs.items()}
            u1, u2, k = got["uninterrupted 1"], got["uninterrupted 2"], got["resumed"]
            for sampled in (False, True):
                kind = "sampled" if sampled else "greedy"
                acc = [o.sampled_accuracy() if sampled else o.greedy_accuracy() for o in got.values()]
                diffs = [paired_gain(u1, u2, sampled=sampled), paired_gain(u1, k, sampled=sampled),
                         paired_gain(u2, k, sampled=sampled)]
                table.add_row(f"{s.name} ({kind})", *(f"{a:.3f}" for a in acc), *(str(d) for d in diffs))
                rows.append({"stage": s.name, "kind": kind, "accuracy": dict(zip(runs, acc)),
                             "noise": vars(diffs[0]), "resumed_vs_1": vars(diffs[1]), "resumed_vs_2": vars(diffs[2])})
    console.print(table)
    console.print(f"killed + resumed run: {seconds / 60:.1f} min of wall time in all")
    (out / "resume.json").write_text(json.dumps({"kill_at": args.kill_at, "wall_s": seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
