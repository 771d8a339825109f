"""One YAML file describes a run. Sections per part; environment variables override fields.

Override form: RINGRL_<SECTION>__<FIELD>=value (nested sections joined by `__`), e.g.
RINGRL_REDIS__URL=redis://10.0.0.5:6379/0. Values are parsed as YAML scalars.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from protocol.config.base import Section
from protocol.config.run_config import RunConfig

ENV_PREFIX = "RINGRL_"


class ConfigError(ValueError):
    """A config a user wrote wrongly; str() is one line naming the field."""


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    out = dict(raw)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        node = out
        for part in path[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[path[-1]] = yaml.safe_load(value) if value != "" else None
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
    raw = apply_env_overrides(raw, os.environ if env is None else env)
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
