from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import ConfigError, RunConfig, describe, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_and_file_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "redis:\n  rollouts_max_len: 12\n"), env={})
    assert cfg.redis.rollouts_max_len == 12
    assert cfg.redis.scored_max_len == RunConfig().redis.scored_max_len


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "redis:\n  url: redis://a:1/0\n"),
                      env={"RINGRL_REDIS__URL": "redis://b:2/0", "RINGRL_RUN__SEED": "7",
                           "UNRELATED": "x"})
    assert cfg.redis.url == "redis://b:2/0" and cfg.run.seed == 7


@pytest.mark.parametrize("text, fragment", [
    ("redis:\n  rollouts_max_len: lots\n", "redis.rollouts_max_len: Input should be a valid integer"),
    ("redis:\n  rollout_max_len: 3\n", "redis.rollout_max_len: unknown field"),
    ("redis:\n  rollouts_max_len: -1\n", "redis.rollouts_max_len: Input should be greater than 0"),
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
