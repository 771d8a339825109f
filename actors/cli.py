"""The `ringrl` command. Each sub-command lives in its own module under actors/commands/ and
registers itself there (`register(app)`), so parts add commands without touching this file."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import actors.commands

app = typer.Typer(
    name="ringrl",
    help="Asynchronous RL post-training of reasoning MoE LLMs (Ring-lite recipe).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """ringrl: C3PO token-budget RL with verifiable rewards, on Ray + Redis Streams."""


_serve: typer.Typer | None = None


def serve_group() -> typer.Typer:
    """The `ringrl serve <part>` group; created on first use so it never appears empty."""
    global _serve
    if _serve is None:
        _serve = typer.Typer(help="Run one part as a standalone service (services mode).",
                             no_args_is_help=True)
        app.add_typer(_serve, name="serve")
    return _serve


def fail(message: str, code: int = 2) -> None:
    """End the command with one line that says what to fix; never a traceback."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


for _mod in sorted(m.name for m in pkgutil.iter_modules(actors.commands.__path__)):
    importlib.import_module(f"actors.commands.{_mod}").register(app)
