"""`ringrl serve learner CONFIG`: the learner as a standalone process consuming the scored stream."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @serve.command("learner")
    def serve_learner(
        config: Optional[Path] = typer.Argument(None, help="Run config (YAML); defaults if omitted."),
        consumer: str = typer.Option("learner-0", help="Consumer name within the learner group."),
    ) -> None:
        """Train on scored groups (C3PO), publish weights, checkpoint; SIGTERM stops after a checkpoint."""
        from cli.errors import fail, load_service_config
        cfg = load_service_config(config)
        if not cfg.redis.url:
            fail("redis.url is required: the learner consumes the run's scored stream")
        import threading

        from learner.checkpoint import latest_checkpoint
        from learner.session import LearnerSession, checkpoint_root

        if not cfg.learner.model_path and latest_checkpoint(checkpoint_root(cfg)) is None:
            fail("learner.model_path is empty and there is no checkpoint to resume from")
        if cfg.learner.model_path and not Path(cfg.learner.model_path).is_dir():
            fail(f"learner.model_path: no such model folder: {cfg.learner.model_path}")
        try:
            session = LearnerSession(cfg, consumer)
            if cfg.learner.weight_transport == "broadcast":  # blocks until every engine has joined
                session.join_broadcast(cfg.learner.broadcast_world_size)
        except (ValueError, OSError) as exc:
            fail(str(exc).splitlines()[0])
        import logging

        from protocol.serving import setup_logging, stop_on_signals

        setup_logging()
        stop = threading.Event()
        stop_on_signals(stop)
        typer.echo(f"learner: version {session.learner.version}, weights at {session.server.base_url}")
        try:
            session.run(stop)
        except Exception as exc:  # the step loop is not restarted in place: exit, resume from the checkpoint
            logging.getLogger("ringrl.learner").critical("step loop failed; exiting 1 (the next start "
                                                        "resumes from the newest checkpoint)", exc_info=exc)
            raise typer.Exit(1) from None
        finally:
            session.close()
