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
        """Generate: POST /v1/rollouts into the run's stream, /v1/completions, /v1/weights."""
        from cli.errors import fail, load_or_fail
        cfg = load_or_fail(config)
        path = model or cfg.rollout.model
        if not path:
            fail("rollout.model is empty: set it in the config or pass --model")
        if not Path(path).is_dir():
            fail(f"rollout.model: {path} is not a model folder")
        import uvicorn

        from protocol.queue import connect
        from protocol.streams import RunKeys
        from rollout_service.engine import Engine
        from rollout_service.server import create_app
        from rollout_service.streaming import Rollouts
        from rollout_service.weights import follow_weights

        engine = Engine(path, cfg.rollout)
        rollouts = None
        if cfg.redis.url:
            client = connect(cfg.redis.url)
            rollouts = Rollouts(engine, client, cfg.run.name, cfg.rollout, cfg.redis.max_backlog)
            if cfg.rollout.follow_weights and cfg.learner.weight_transport == "http":
                follow_weights(engine, client, RunKeys(cfg.run.name))
            elif cfg.rollout.follow_weights:
                # Pulling as well would move the engine past the version the learner broadcasts next.
                typer.echo("rollout.follow_weights: off with learner.weight_transport: broadcast "
                           "(versions arrive through POST /v1/weights)")
        try:
            uvicorn.run(create_app(engine, rollouts, weight_backend=cfg.learner.broadcast_backend),
                        host=cfg.rollout.host, port=cfg.rollout.port, log_level="info")
        finally:
            if rollouts is not None:
                rollouts.stop()
            engine.close()
