"""`ringrl sft [CONFIG]`: distillation of the tiny MoE (or a given model) on teacher solutions."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @app.command("sft")
    def sft_cmd(
        config: Path | None = typer.Argument(None, help="YAML with run/model/tasks/sft sections (defaults if omitted)."),
        eval_n: int = typer.Option(0, "--eval-n", min=0,
                                   help="Held-out items per source to score at each checkpoint (0: none)."),
    ) -> None:
        """Distil the model on teacher solutions, saving several checkpoints."""
        from rich.console import Console

        from cli.errors import fail, load_or_fail
        from protocol.config.train import SFTRunConfig
        from recipe.distil import run_sft
        from recipe.tasks import TaskDataError
        from reward_service.sandbox import SandboxUnavailable

        cfg = load_or_fail(config, SFTRunConfig)
        try:
            run_sft(cfg, eval_n, Console())
        except (TaskDataError, ValueError) as exc:
            fail(str(exc))
        except SandboxUnavailable as exc:
            fail(f"{exc} (the held-out check of --eval-n runs code in the sandbox)")
