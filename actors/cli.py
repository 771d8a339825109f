"""The `ringrl` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import typer

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


def fail(message: str, code: int = 2) -> None:
    """End the command with one line that says what to fix; never a traceback."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)
