from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import ConfigError, RunConfig, describe, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_and_file_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "redis:\n  max_backlog: 12\n"), env={})
    assert cfg.redis.max_backlog == 12
    assert cfg.redis.claim_idle_ms == RunConfig().redis.claim_idle_ms


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "redis:\n  url: redis://a:1/0\n"),
                      env={"RINGRL_REDIS__URL": "redis://b:2/0", "RINGRL_RUN__SEED": "7",
                           "UNRELATED": "x"})
    assert cfg.redis.url == "redis://b:2/0" and cfg.run.seed == 7


@pytest.mark.parametrize("text, fragment", [
    ("redis:\n  max_backlog: lots\n", "redis.max_backlog: Input should be a valid integer"),
    ("redis:\n  max_backlg: 3\n", "redis.max_backlg: unknown field"),
    ("redis:\n  max_backlog: -1\n", "redis.max_backlog: Input should be greater than 0"),
    ("learner:\n  checkpoint_every: 0\n", "ack: checkpoint needs checkpoint_every > 0"),
    ("bogus: {}\n", "bogus: unknown field"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("redis: [\n", "not valid YAML"),
])
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_env_override_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="run.seed"):
        load_config(None, env={"RINGRL_RUN__SEED": "abc"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/run.yaml", env={})


def test_every_field_documented() -> None:
    rows = describe()
    assert rows and all(desc for _, _, desc in rows), [name for name, _, d in rows if not d]


def test_env_values_are_converted_by_field_type() -> None:
    from protocol.config.train import TrainConfig

    cfg = load_config(None, model=TrainConfig, env={
        "RINGRL_TASKS__SOURCES": "[chain_sum, leg_counting]",  # YAML flow list (JSON works too)
        "RINGRL_SFT__SAVE_STEPS": "[10, 20]",
        "RINGRL_SFT__LR": "1e-3",
        "RINGRL_ROLLOUT__CPU_THREADS_BIND": "0",  # a str field keeps "0", not the int 0
        "RINGRL_ASYNC": "false",  # an aliased top-level field takes the prefix too
        "ASYNC": "true",
    })
    assert cfg.tasks.sources == ["chain_sum", "leg_counting"] and cfg.sft.save_steps == [10, 20]
    assert cfg.sft.lr == 1e-3 and cfg.rollout.cpu_threads_bind == "0" and cfg.asynchronous is False


@pytest.mark.parametrize("env, fragment", [
    ({"RINGRL_REDDIS__URL": "redis://x:1/0"}, "reddis: unknown field"),
    ({"RINGRL_RUN__SEEED": "3"}, "run.seeed: unknown field"),
    ({"RINGRL_TASKS__SOURCES": "[chain_sum"}, "sources: not valid YAML"),
])
def test_bad_env_override_is_one_line(env: dict[str, str], fragment: str) -> None:
    from protocol.config.train import TrainConfig

    with pytest.raises(ConfigError) as info:
        load_config(None, env=env, model=TrainConfig)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_pin_kernels_fills_only_what_the_environment_leaves_open() -> None:
    from protocol.config.sft import KERNEL_ENV, pin_kernels

    env = {"MKL_CBWR": "COMPATIBLE"}
    assert pin_kernels(env) == {**KERNEL_ENV, "MKL_CBWR": "COMPATIBLE"} == env


def test_routing_replay_without_recorded_routing_is_refused() -> None:
    from protocol.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="router_replay: r3 needs rollout.record_routing"):
        parse_config({"learner": {"router_replay": "r3"}}, env={})
    assert parse_config({"learner": {"router_replay": "r3"}, "rollout": {"record_routing": True}},
                        env={}).learner.router_replay == "r3"
