"""`ringrl train [CONFIG]`: the main job (embedded mode)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @app.command()
    def train(config: Optional[Path] = typer.Argument(None, help="Run config (YAML); default: the shipped demo."),
              output_dir: Optional[str] = typer.Option(None, help="Override run.output_dir."),
              name: Optional[str] = typer.Option(None, help="Override run.name.")) -> None:
        """Run SFT, entropy-based checkpoint choice and the RL stages on local Ray + Redis."""
        from cli.errors import fail, load_or_fail
        from protocol.config.train import DEFAULT_CONFIG, TrainConfig

        cfg = load_or_fail(config or DEFAULT_CONFIG, TrainConfig)
        if output_dir:
            cfg.run.output_dir = output_dir
        if name:
            cfg.run.name = name
        from recipe.driver import train as run
        from reward_service.sandbox import SandboxUnavailable

        console = Console(width=None if sys.stdout.isatty() else 200)  # logs keep whole tables
        try:
            run(cfg, console)
        except TimeoutError as exc:  # a run that cannot make progress: say why, not a traceback
            fail(str(exc), code=1)
        except SandboxUnavailable as exc:
            fail(f"{exc} (set reward.sandbox.backend)")
        except KeyboardInterrupt:
            console.print("interrupted: actors and Redis stopped")
            raise typer.Exit(130)
