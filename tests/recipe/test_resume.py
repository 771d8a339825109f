"""`ringrl train --resume RUN_DIR`: a run SIGKILLed inside its second stage (driver, Ray, Redis and
every actor at once) keeps its finished first stage, goes on from the second stage's newest learner
checkpoint and ends with every step trained once, in order, and an accounting that balances — here
on another shape than it was killed in (one engine and one learner rank, resumed with two of each:
the AdamW state of the one rank is re-cut into two shards)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from bench.resume import kill_session, metrics
from tests.recipe.conftest import BIN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
BUDGET = 512
STEPS = {"sums": 2, "legs": 4}


def config(tmp: Path, start: str) -> Path:
    stage = {"token_budget": BUDGET, "max_new_tokens": 64, "n": 8, "prompts_per_round": 8, "warmup_steps": 0}
    cfg = {"run": {"name": "resumed", "output_dir": str(tmp / "runs"), "seed": 0},
           "model": {"path": start},
           "tasks": {"sources": ["chain_sum", "leg_counting"], "train_size": 400, "held_out_size": 10},
           "sft": {"max_steps": 0, "max_minutes": 0},
           "learner": {"checkpoint_every": 2, "max_staleness": 4},
           "rollout": {"max_model_len": 256, "cpu_threads_bind": "0"},
           "stages": [{"name": "sums", "sources": ["chain_sum"], "steps": STEPS["sums"], **stage},
                      {"name": "legs", "sources": ["leg_counting"], "steps": STEPS["legs"], **stage}],
           "eval_size": 6, "eval_samples": 1}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_killed_in_its_second_stage_resumes_there(start_checkpoint: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, start_checkpoint)
    run = tmp_path / "runs" / "resumed"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen([str(BIN / "ringrl"), "train", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        # past the stage's checkpoint at step 2, with a step after it that the resumed run redoes
        while not any(r.get("stage") == "legs" and r.get("stage_step", 0) >= 3 and "tokens" in r for r in metrics(run)):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.2)
    finally:
        kill_session(first.pid, run)
        first.wait(30)
    assert (run / "stages" / "sums" / "accounting.yaml").exists()  # the first stage finished
    assert not (run / "stages" / "legs" / "accounting.yaml").exists()  # the second did not
    sums = (run / "stages" / "sums" / "accounting.yaml").read_text()
    saved = yaml.safe_load((run / "config.yaml").read_text())  # what --resume reads: the shape may change
    saved["learner"].update(ranks=2, rank_num_cpus=0.5)
    saved["cluster"].update(engines=2, engine_cpus=0.5)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))

    r = subprocess.run([str(BIN / "ringrl"), "train", "--resume", str(run)], capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming stage legs from its newest learner checkpoint" in r.stdout
    assert (run / "stages" / "sums" / "accounting.yaml").read_text() == sums  # kept, not run again

    steps = [x for x in metrics(run) if "tokens" in x]
    assert [(x["stage"], x["stage_step"]) for x in steps] == \
        [("sums", i) for i in range(1, 3)] + [("legs", i) for i in range(1, 5)]  # each once, in order
    assert [x["step"] for x in steps] == list(range(1, 7))
    assert all(x["tokens"] == BUDGET for x in steps)
    for name in STEPS:
        a = yaml.safe_load((run / "stages" / name / "accounting.yaml").read_text())
        assert a["steps"] == STEPS[name]
        assert a["generated_groups"] == a["groups_in"] + a["groups_duplicate"], a
    legs = yaml.safe_load((run / "stages" / "legs" / "accounting.yaml").read_text())
    assert legs["groups_before_resume"] > 0
    assert legs["generated_groups_engine0"] > 0 and legs["generated_groups_engine1"] > 0, legs
    assert (sorted((run / "stages" / "legs" / "checkpoints").glob("step-*"))[-1] / "optimizer" / ".metadata").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert [s["stage"] for s in summary] == ["sums", "legs"]
    assert (run / "plots" / "reward.png").is_file()


def test_resume_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "ringrl"), "train", "--resume", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "no progress.json" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
