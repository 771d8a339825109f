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
    from protocol.config import ConfigError, RunConfig, load_config

    try:
        return load_config(path, model=model or RunConfig)
    except ConfigError as exc:
        fail(str(exc))
