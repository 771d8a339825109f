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
              name: Optional[str] = typer.Option(None, help="Override run.name."),
              resume: Optional[Path] = typer.Option(
                  None, help="Resume the run in this folder (RUN_DIR = output_dir/name) where it stopped, "
                             "with the config it saved there.")) -> None:
        """Run SFT, entropy-based checkpoint choice and the RL stages on local Ray + Redis."""
        from cli.errors import fail, load_or_fail
        from protocol.config.train import DEFAULT_CONFIG, TrainConfig

        if resume is not None:
            if config is not None or output_dir or name:
                fail("--resume RUN_DIR takes the run's own config: give no CONFIG, --output-dir or --name")
            if not (resume / "progress.json").is_file():
                fail(f"--resume {resume}: no progress.json there (not a ringrl train run folder, or it "
                     "stopped before SFT ended: start it again)")
            config = resume / "config.yaml"
        cfg = load_or_fail(config or DEFAULT_CONFIG, TrainConfig)
        if resume is not None:  # the folder may have moved since the run wrote its config
            cfg.run.output_dir, cfg.run.name = str(resume.resolve().parent), resume.resolve().name
        if output_dir:
            cfg.run.output_dir = output_dir
        if name:
            cfg.run.name = name
        from recipe.driver import train as run
        from reward_service.sandbox import SandboxUnavailable

        console = Console(width=None if sys.stdout.isatty() else 200)  # logs keep whole tables
        try:
            run(cfg, console, resume=resume is not None)
        except TimeoutError as exc:  # a run that cannot make progress: say why, not a traceback
            fail(str(exc), code=1)
        except SandboxUnavailable as exc:
            fail(f"{exc} (set reward.sandbox.backend)")
        except KeyboardInterrupt:
            console.print("interrupted: actors and Redis stopped")
            raise typer.Exit(130)
