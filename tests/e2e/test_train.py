"""`ringrl train` end to end, on a real local Redis, Ray, vLLM engine, reward workers and sandbox:
a short SFT, checkpoint selection, then a few steps of each RL stage. Asserts the pipeline's
invariants, not learning (the demo run shows learning; see README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

BUDGET = 768
N = 8  # responses per prompt in both stages
MAX_STALENESS = 2


def config(tmp: Path, asynchronous: bool) -> Path:
    cfg = {
        "run": {"name": "e2e", "output_dir": str(tmp / "runs"), "seed": 0},
        "tasks": {"train_size": 1500, "held_out_size": 20},
        # By steps, not minutes: the checkpoint (and whether it solves some problems, without which no
        # group has mixed rewards to train on) must not depend on the speed of the machine.
        "sft": {"batch_size": 16, "max_steps": 1200, "max_minutes": 0, "save_every_steps": 600,
                "save_every_minutes": 0},
        "selection": {"probe_size": 8, "eval_size": 10},
        # Async broadcasts weights (the demo's transport); sync pulls them over HTTP.
        "learner": {"max_staleness": MAX_STALENESS, "checkpoint_every": 2,
                    "weight_transport": "broadcast" if asynchronous else "http"},
        "rollout": {"max_model_len": 256, "cpu_threads_bind": "0"},
        "async": asynchronous,
        "stages": [
            {"name": "math", "sources": ["chain_sum", "leg_counting"], "steps": 3, "token_budget": BUDGET,
             "max_new_tokens": 64, "n": N, "prompts_per_round": 16, "warmup_steps": 0},
            # Replay puts math prompts into the code stage: both reward paths in one stage.
            {"name": "code", "sources": ["legs_fn"], "steps": 3, "token_budget": BUDGET,
             "max_new_tokens": 64, "n": N, "prompts_per_round": 16, "warmup_steps": 0,
             "replay_sources": ["chain_sum"], "replay_share": 0.3},
        ],
        "eval_size": 10,
        "eval_every": 2,
        "eval_curve_items": 6,
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    exe = Path(sys.executable).with_name("ringrl")
    r = subprocess.run([str(exe), "train", str(config(tmp, asynchronous=True))], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (tmp / "runs" / "e2e" / "stdout.txt").write_text(r.stdout)
    return tmp / "runs" / "e2e"


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "tokens" in r]


def test_every_step_trains_exactly_the_budget(run_dir: Path) -> None:
    rows = steps(run_dir)
    assert len(rows) == 6
    assert all(r["tokens"] == BUDGET for r in rows), [r["tokens"] for r in rows]


def test_every_group_and_token_is_accounted_for(run_dir: Path) -> None:
    for stage in ("math", "code"):
        a = yaml.safe_load((run_dir / "stages" / stage / "accounting.yaml").read_text())
        assert a["generated_groups"] == a["groups_in"] + a["groups_duplicate"], a
        assert a["groups_in"] > 0 and a["steps"] == 3
        # generated = trained + filtered + stale-dropped + carried (buffered at the stage end)
        assert a["generated_tokens"] == (a["tokens_trained"] + a["tokens_filtered"] + a["tokens_stale"]
                                         + a["tokens_dropped_leftover"] + a["tokens_buffered"]), a
        assert a["tokens_trained"] == 3 * BUDGET
        # Every response got exactly one verdict from the reward service.
        assert sum(v for k, v in a.items() if k.startswith("verdicts_")) == N * a["generated_groups"], a


def test_weight_versions_are_monotonic_and_staleness_bounded(run_dir: Path) -> None:
    rows = steps(run_dir)
    assert [r["version"] for r in rows] == list(range(1, 7))
    assert all(r["staleness_max"] <= MAX_STALENESS for r in rows)


def test_run_leaves_plots_tensorboard_and_final_weights(run_dir: Path) -> None:
    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"reward.png", "grad_norm.png", "accuracy.png"} <= plots, plots
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "stages" / "code" / "final" / "model.safetensors").is_file()


def test_summary_measures_each_stage_against_the_sft_start(run_dir: Path) -> None:
    rows = json.loads((run_dir / "summary.json").read_text())
    assert [r["stage"] for r in rows] == ["math", "code"]
    assert rows[0]["before"] == rows[0]["sft_start"]  # nothing trained before the first stage
    assert rows[-1]["final"] == rows[-1]["after"]  # the last stage's weights are the final ones
    for r in rows:
        assert r["sft_start"]["items"] == r["after"]["items"] == r["final"]["items"] > 0
        for g in r["gain_vs_sft_start"].values():
            assert 0 < g["items"] <= r["after"]["items"] and g["half_width"] >= 0 and -1 <= g["mean"] <= 1
    stdout = (run_dir / "stdout.txt").read_text()
    assert "(+30% replay of chain_sum)" in stdout
    for r in rows:
        assert f"{r['stage']} vs the SFT start on " in stdout


def test_held_out_curve_inside_each_stage(run_dir: Path) -> None:
    """eval_every: 2 over 3 steps: measured at the stage's start, step 2 and its end, each time on
    the weights the learner had just published (engine version == global step)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in rows if "accuracy_curve" in r]
    assert [(r["stage"], r["stage_step"]) for r in curve] == [
        ("math", 0), ("math", 2), ("math", 3), ("code", 0), ("code", 2), ("code", 3)]
    assert all(r["curve_version"] == r["step"] and 0 <= r["accuracy_curve"] <= 1 for r in curve), curve
    # Sampled pass@1 next to it: 4 responses (the default) on each of the 6 items, so a 24th part.
    assert all(0 <= r["accuracy_curve_sampled"] <= 1
               and abs(r["accuracy_curve_sampled"] * 24 - round(r["accuracy_curve_sampled"] * 24)) < 1e-9
               for r in curve), curve
    for name in ("accuracy_curve", "accuracy_curve_sampled"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 0
