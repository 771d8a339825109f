"""How every command ends on a user's mistake: one line that says what to fix, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def load_or_fail(path: str | Path | None, model: Any = None) -> Any:
    """The config at `path` (defaults when None) as `model` (RunConfig unless given); a mistake in
    it ends the command with the one line that names the field."""
    from protocol.auth import load_tokens
    from protocol.config import ConfigError, RunConfig, load_config

    try:
        cfg = load_config(path, model=model or RunConfig)
        if isinstance(cfg, RunConfig):
            load_tokens(cfg.auth)  # an unreadable token file is a mistake in the config, said now
        return cfg
    except ConfigError as exc:
        fail(str(exc))


def load_service_config(path: str | Path | None) -> Any:
    """A service's RunConfig from a run config that may be a whole TrainConfig (stages, tasks, ...):
    one file serves every part of a deployment."""
    from protocol.config.train import TrainConfig

    return load_or_fail(path, TrainConfig).services()
