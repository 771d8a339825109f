"""`ringrl serve driver CONFIG`: run the config's stages against the services (services mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @serve.command("driver")
    def serve_driver(
        config: Optional[Path] = typer.Argument(None, help="Run config (YAML); default: the shipped demo."),
    ) -> None:
        """Feed the stages' prompts to the rollout servers, pace the learner stage by stage, measure
        held-out accuracy through the services; metrics.jsonl, plots, summary.json like `ringrl train`.
        After the last stage it stays up (idle, /healthz answers) until stopped."""
        import sys

        from cli.errors import fail, load_or_fail
        from protocol.config.train import DEFAULT_CONFIG, TrainConfig

        cfg = load_or_fail(config or DEFAULT_CONFIG, TrainConfig)
        if not cfg.redis.url:
            fail("redis.url is required: the driver paces the learner through the run's Redis")
        import logging

        from prometheus_client import CollectorRegistry
        from rich.console import Console

        from protocol.auth import load_tokens
        from protocol.metrics import serve_observability
        from protocol.serving import setup_logging, shutdown_self, stop_on_signals
        from protocol.supervise import Supervisor
        from recipe.service_driver import ServiceDriver

        setup_logging()
        # A feeder that keeps failing stops the driver (exit 1) rather than leaving a server unfed;
        # a restarted driver goes on from the stage the learner is in.
        supervisor = Supervisor(on_give_up=shutdown_self)
        stop_on_signals(supervisor.stop)
        try:
            driver = ServiceDriver(cfg, Console(width=None if sys.stdout.isatty() else 200), supervisor)
        except ValueError as exc:  # a refused Redis login (ConfigError)
            fail(str(exc))
        serve_observability(CollectorRegistry(), lambda: {**supervisor.health(), **driver.status},
                            cfg.driver.host, cfg.driver.port, load_tokens(cfg.auth))
        try:
            driver.run()
        except TimeoutError as exc:
            fail(str(exc), code=1)
        except Exception as exc:  # a restart resumes at the stage the learner is in
            logging.getLogger("ringrl.driver").critical("driver failed; exiting 1", exc_info=exc)
            raise typer.Exit(1) from None
        supervisor.stop.wait()  # done: stay up so that an orchestrator does not rerun it
        raise typer.Exit(1 if supervisor.failed and not driver.status["done"] else 0)
