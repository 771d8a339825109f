from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rich.console import Console

from actors.redis_server import start_local_redis
from actors.stage import prompt_stream, stage_run_config
from actors.tasks import build_tasks
from actors.train_config import DEFAULT_CONFIG, StageConfig, TrainConfig
from protocol.config import ConfigError, load_config, parse_config


def test_local_redis_starts_from_a_relative_folder_and_stops(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        server = start_local_redis(Path("run") / "redis")
    finally:
        os.chdir(cwd)
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.xgroup_create("s", "g", id="0", mkstream=True)
        assert client.execute_command("XAUTOCLAIM", "s", "g", "c", 0, "0-0")[0] == b"0-0"
        assert (tmp_path / "run" / "redis" / "redis.log").is_file()
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_default_config_loads_and_stage_sections_are_specialised() -> None:
    cfg = load_config(DEFAULT_CONFIG, model=TrainConfig, env={})
    stage = cfg.stages[0]
    rc = stage_run_config(cfg, stage, "/models/x", "redis://127.0.0.1:1/0", 12345)
    assert rc.learner.token_budget == stage.token_budget and rc.learner.lr == stage.lr
    assert rc.learner.model_path == rc.rollout.model == "/models/x"
    assert rc.rollout.n == stage.n and rc.rollout.max_tokens == stage.max_new_tokens
    assert rc.learner.broadcast_port == 12345 and rc.learner.broadcast_world_size == 2
    assert rc.redis.url == "redis://127.0.0.1:1/0"
    assert rc.rollout.max_staleness == rc.learner.max_staleness
    assert cfg.redis.url is None  # the run's own config is not modified


def test_prompt_stream_cycles_through_epochs_with_distinct_ids() -> None:
    cfg = TrainConfig()
    items = build_tasks(cfg.tasks.model_copy(update={"train_size": 5, "sources": ["chain_sum"]}), "train")
    items += items[:2]  # a train split may repeat an item; each draw still gets its own id
    stage = StageConfig(name="math", sources=["chain_sum"])
    got = list(itertools.islice(prompt_stream(items, stage, seed=1), 3 * len(items)))
    ids = [g["prompt_id"] for g in got]
    assert len(set(ids)) == len(ids)
    first_epoch = {g["prompt"] for g in got[:len(items)]}
    assert first_epoch == {it.prompt for it in items}
    assert all(g["stage"] == "math" and g["task"] == "math" for g in got)


@pytest.mark.parametrize("raw, fragment", [
    ({"stages": [{"name": "a", "sources": ["chain_sum"]}, {"name": "a", "sources": ["linear_fn"]}]},
     "stage names must be unique"),
    ({"stages": [{"name": "a", "sources": ["sudoku"]}]}, "stages.0.sources.0"),
    ({"async": "maybe"}, "async"),
    ({"stages": [{"name": "x", "sources": ["chain_sum", "linear_fn"]}]}, "stage x: sources mix task kinds"),
])
def test_train_config_errors_name_the_field(raw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_config(raw, env={}, model=TrainConfig)


def test_train_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: m, sources: [chain_sum], token_budget: zero}\n")
    exe = Path(sys.executable).with_name("ringrl")
    r = subprocess.run([str(exe), "train", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "stages.0.token_budget" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_summary_table_shows_greedy_and_sampled_gains() -> None:
    from actors.driver import HeldOut, StageSummary, summary_table

    sft_start, before, after = HeldOut(0.300, 0.250), HeldOut(0.245, 0.120), HeldOut(0.325, 0.155)
    row = StageSummary("code", 40, sft_start, before, after, 180.0,
                       {"generated_groups": 1472, "tokens_trained": 163840, "groups_filtered": 766, "groups_stale": 0})
    buf = io.StringIO()
    Console(file=buf, width=250).print(summary_table([row]))
    text = buf.getvalue()
    assert "0.245 → 0.325" in text and "+0.080" in text
    assert "0.300" in text and "+0.025" in text  # after vs the SFT start
    assert "0.120 → 0.155" in text and "+0.035" in text
    assert "163840" in text and "3.0" in text
