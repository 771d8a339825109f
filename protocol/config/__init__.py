"""One YAML file describes a run. Sections per part; environment variables override fields.

Override form: RINGRL_<SECTION>__<FIELD>=value (nested sections joined by `__`), e.g.
RINGRL_REDIS__URL=redis://10.0.0.5:6379/0, read by pydantic-settings' EnvSettingsSource. A value
is kept as a string for pydantic to convert (`12`, `true`, `1e-3`; a str field keeps `0` as "0");
a list or mapping field's value is parsed as YAML, so `[chain_sum, leg_counting]` and JSON both work.
A top-level field that is not a section is set by RINGRL_<FIELD> (e.g. RINGRL_EVAL_SIZE=50).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError

from protocol.config.base import Section
from protocol.config.run_config import RunConfig

ENV_PREFIX = "RINGRL_"


class ConfigError(ValueError):
    """A config a user wrote wrongly; str() is one line naming the field."""


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' env source over any Section model and any mapping (tests pass `env=`)."""

    def __init__(self, model: type[Section], env: Mapping[str, str]) -> None:
        # env_prefix_target="all": an aliased field (TrainConfig's `async`) is RINGRL_ASYNC, not ASYNC.
        super().__init__(model, case_sensitive=False, env_prefix=ENV_PREFIX,  # type: ignore[arg-type]
                         env_prefix_target="all", env_nested_delimiter="__")
        self.env_vars = {k.lower(): v for k, v in env.items()}

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:  # YAML flow is a superset of JSON: `[a, b]` as well as `["a", "b"]`
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{field_name}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str],
                        model: type[Section] = RunConfig) -> dict[str, Any]:
    """`raw` with the RINGRL_* variables of `env` merged over it (the environment wins)."""
    try:
        over = _EnvSource(model, env)()
    except SettingsError as exc:
        raise ConfigError(f"environment: {' '.join(str(exc.__cause__ or exc).split())}") from None
    # pydantic-settings skips variables naming no field; an empty misspelt section makes validation
    # report it ("bogus: unknown field") as it does for the same mistake in a file.
    for key in env:
        if key.upper().startswith(ENV_PREFIX) and "__" in key:
            section = key[len(ENV_PREFIX):].split("__")[0].lower()
            if section not in _env_names(model):
                over.setdefault(section, {})
    return _merge(raw, over)


def _env_names(model: type[Section]) -> set[str]:
    return {(f.alias or name).lower() for name, f in model.model_fields.items()}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _one_line(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = "unknown field (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_config(raw: Any, source: str = "config", env: Mapping[str, str] | None = None,
                 model: type[Section] = RunConfig) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_env_overrides(raw, os.environ if env is None else env, model)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None,
                model: type[Section] = RunConfig) -> Any:
    """Read and validate a YAML run config; `None` gives the defaults (plus env overrides)."""
    if path is None:
        return parse_config({}, "defaults", env, model)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(raw, str(p), env, model)


def describe(model: type[Section] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, default, description) for every field: the reference table in the docs."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, Section):
            rows += describe(ann, f"{prefix}{name}.")
        else:
            default = f.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), f.description or ""))
    return rows
