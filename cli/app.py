"""The `ringrl` command. Each sub-command lives in its own module under cli/commands/ and
registers itself there (`register(app, serve)`), so parts add commands without touching this file."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import cli.commands
from protocol.config.sft import pin_kernels

app = typer.Typer(
    name="ringrl",
    help="Asynchronous RL post-training of reasoning MoE LLMs (Ring-lite recipe).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve = typer.Typer(help="Run one part as a standalone service (services mode).", no_args_is_help=True)
app.add_typer(serve, name="serve")


@app.callback()
def main() -> None:
    """ringrl: C3PO token-budget RL with verifiable rewards, on Ray + Redis Streams."""
    # Before any command runs a torch op: the same kernels on every machine of this kind, so SFT
    # checkpoints (and the RL start chosen from them) do not depend on the CPU (README).
    pin_kernels()


for _mod in sorted(m.name for m in pkgutil.iter_modules(cli.commands.__path__)):
    importlib.import_module(f"cli.commands.{_mod}").register(app, serve)
