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

from protocol.config import ConfigError, load_config, parse_config
from protocol.config.train import DEFAULT_CONFIG, StageConfig, TrainConfig
from recipe.local_redis import start_local_redis
from recipe.prompts import prompt_stream
from recipe.stage import stage_run_config
from recipe.tasks import build_tasks


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
    rc = stage_run_config(cfg, stage, "/models/x", "redis://127.0.0.1:1/0", Path("/runs/demo/stages/math"))
    assert rc.learner.token_budget == stage.token_budget and rc.learner.lr == stage.lr
    assert rc.learner.model_path == rc.rollout.model == "/models/x"
    assert rc.rollout.n == stage.n and rc.rollout.max_tokens == stage.max_new_tokens
    assert rc.learner.broadcast_world_size == 2  # the learner and the one engine
    three = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"engines": 3})})
    assert stage_run_config(three, stage, "/m", "redis://r:1/0", Path("/r")).learner.broadcast_world_size == 4
    assert rc.learner.weight_transport == "broadcast"  # the demo's engine shares a gloo group with the learner
    assert TrainConfig().learner.weight_transport == "http"  # elsewhere no rendezvous is needed
    assert rc.redis.url == "redis://127.0.0.1:1/0"
    assert rc.learner.checkpoint_dir == "/runs/demo/stages/math/checkpoints"  # a stage never resumes another
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


def test_prompt_stream_mixes_in_replay_at_its_share() -> None:
    tasks = TrainConfig().tasks.model_copy(update={"train_size": 40})
    own = build_tasks(tasks.model_copy(update={"sources": ["legs_fn"]}), "train")
    old = build_tasks(tasks.model_copy(update={"sources": ["chain_sum"]}), "train")
    stage = StageConfig(name="code", sources=["legs_fn"], replay_sources=["chain_sum"], replay_share=0.25)
    got = list(itertools.islice(prompt_stream(own, stage, seed=3, replay=old), 2000))
    replayed = [g for g in got if g["task"] == "math"]
    assert 0.2 < len(replayed) / len(got) < 0.3
    assert {g["prompt"] for g in replayed} == {it.prompt for it in old}
    assert {g["prompt"] for g in got if g["task"] == "code"} == {it.prompt for it in own}
    assert len({g["prompt_id"] for g in got}) == len(got) and all(g["stage"] == "code" for g in got)


def test_a_stage_takes_the_jsonl_items_of_its_own_kind_only(tmp_path: Path) -> None:
    from recipe.prompts import stage_items

    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "What is 2 + 2?", "task": "math", "answer": "4"}\n'
                    '{"prompt": "Read n, print n.", "task": "code", "tests": [{"stdin": "1", "stdout": "1"}]}\n')
    raw = {"tasks": {"sources": [], "train_files": [str(data)]},
           "stages": [{"name": "m", "sources": [], "task": "math"},
                      {"name": "c", "sources": ["legs_fn"], "replay_sources": ["chain_sum"], "replay_share": 0.2}]}
    cfg = parse_config(raw, env={}, model=TrainConfig)
    items, replay = stage_items(cfg, cfg.stages[0])
    assert [it.question for it in items] == ["What is 2 + 2?"] and replay == []
    items, replay = stage_items(cfg, cfg.stages[1])
    assert {it.source for it in items} == {"legs_fn", "jsonl"} and all(it.task.value == "code" for it in items)
    assert "Read n, print n." in [it.question for it in items]
    assert replay and all(it.source == "chain_sum" for it in replay)  # JSONL items are not replayed


@pytest.mark.parametrize("raw, fragment", [
    ({"stages": [{"name": "a", "sources": ["chain_sum"]}, {"name": "a", "sources": ["linear_fn"]}]},
     "stage names must be unique"),
    ({"stages": [{"name": "a", "sources": ["sudoku"]}]}, "stages.0.sources.0"),
    ({"async": "maybe"}, "async"),
    ({"stages": [{"name": "x", "sources": ["chain_sum", "linear_fn"]}]}, "stage x: sources mix task kinds"),
    ({"stages": [{"name": "x", "sources": ["legs_fn"], "replay_sources": ["chain_sum"]}]},
     "stage x: replay_sources and replay_share"),
    ({"stages": [{"name": "x", "sources": []}]}, "stage x: no sources; set task"),
    ({"stages": [{"name": "x", "sources": ["chain_sum"], "task": "code"}]}, "stage x: sources mix task kinds"),
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


def test_summary_table_shows_gains_over_the_sft_start_with_intervals() -> None:
    from recipe.driver import StageSummary, summary_table, verdicts
    from recipe.evaluate import Outcomes

    items = build_tasks(TrainConfig().tasks.model_copy(update={"sources": ["legs_fn"], "held_out_size": 4}),
                        "held_out")

    def scored(greedy: list[bool], correct: list[int]) -> Outcomes:
        return Outcomes(items, greedy, correct, 2, [1.0] * 4, [1] * 4)

    sft_start = scored([True, False, False, False], [1, 0, 0, 0])  # 0.250 greedy, 0.125 sampled
    before = scored([False] * 4, [0] * 4)
    after = scored([True, True, True, False], [2, 2, 1, 0])  # per-item greedy gains 0, 1, 1, 0
    row = StageSummary("code", 40, sft_start, before, after, after, 180.0,
                       {"generated_groups": 1472, "tokens_trained": 163840, "groups_filtered": 766, "groups_stale": 0})
    buf = io.StringIO()
    Console(file=buf, width=300).print(summary_table([row]))
    text = buf.getvalue()
    half = 1.96 * (1 / 3) ** 0.5 / 2
    assert "0.000 → 0.750" in text and f"+0.500 ± {half:.3f}" in text
    assert "0.125 → 0.625" in text and "0.750 (+0.500" in text
    assert "163840" in text and "3.0" in text
    (line,) = verdicts([row])
    # Sampled per-item gains 0.5, 1, 0.5, 0 vary less than greedy's 0, 1, 1, 0: only sampled is clear.
    assert line.startswith("code vs the SFT start on 4 distinct held-out items: after its stage, sampled "
                           "clearly above (+0.500 ± 0.400)") and f"greedy not clearly above (+0.500 ± {half:.3f})" in line
    many = StageSummary("code", 40, *(Outcomes(items * 5, o.greedy * 5, o.correct * 5, 2, [1.0] * 20, [1] * 20)
                                      for o in (sft_start, before, after, before)), 180.0, {})
    # Every item repeated 5 times: still 4 observations, so still not clear (20 would be).
    assert "greedy not clearly above (+0.500 ± 0.566)" in verdicts([many])[0]
