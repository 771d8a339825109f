"""`ringrl serve rollout CONFIG`: one vLLM engine behind the rollout HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @serve.command("rollout")
    def serve_rollout(
        config: Optional[Path] = typer.Argument(None, help="Run config (YAML); defaults if omitted."),
        model: Optional[str] = typer.Option(None, help="Model folder (default rollout.model)."),
    ) -> None:
        """Generate: POST /v1/rollouts into the run's stream, /v1/completions, /v1/weights.
        SIGTERM drains the groups in flight (rollout.drain_s) and hands the rest back."""
        from cli.errors import fail, load_service_config
        cfg = load_service_config(config)
        path = model or cfg.rollout.model
        if not path:
            fail("rollout.model is empty: set it in the config or pass --model")
        if not Path(path).is_dir():
            fail(f"rollout.model: {path} is not a model folder")
        from protocol.serving import serve, setup_logging
        from rollout_service.service import build

        setup_logging()
        try:
            app, supervisor, cleanup = build(cfg, path)
        except ValueError as exc:  # vLLM's refusal of the engine settings (e.g. max_model_len)
            fail(f"rollout: {str(exc).splitlines()[0]}")
        raise typer.Exit(serve(app, cfg.rollout.host, cfg.rollout.port, supervisor, cleanup))
