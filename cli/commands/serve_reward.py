"""`ringrl serve reward CONFIG`: the scoring HTTP server and/or N stream reward workers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @serve.command("reward")
    def serve_reward(
        config: Optional[Path] = typer.Argument(None, help="Run config (YAML); defaults if omitted."),
        http: bool = typer.Option(True, help="Serve POST /v1/score on reward.host:reward.port."),
        workers: Optional[int] = typer.Option(None, help="Stream workers (default reward.workers)."),
    ) -> None:
        """Score responses: HTTP API and/or workers consuming the run's rollouts stream. A dead
        worker is restarted; SIGTERM stops every worker after the batch it holds."""
        from cli.errors import fail, load_service_config
        cfg = load_service_config(config)
        # Without a Redis URL the default is the HTTP server alone; asking for workers is an error.
        n = (cfg.reward.workers if cfg.redis.url else 0) if workers is None else workers
        if n < 0:
            fail("--workers must be >= 0")
        if n and not cfg.redis.url:
            fail("redis.url is required for stream workers (or pass --workers 0)")
        if not http and not n:
            fail("nothing to run: --no-http and 0 workers")
        from protocol.auth import load_tokens, warn_if_open
        from protocol.serving import serve, setup_logging, shutdown_self
        from protocol.supervise import Supervisor
        from reward_service.sandbox import SandboxUnavailable
        from reward_service.service import build_pool

        setup_logging()
        if http:
            from reward_service.server import create_app
            try:
                app = create_app(cfg.reward, tokens=load_tokens(cfg.auth))
            except SandboxUnavailable as exc:
                fail(f"{exc} (set reward.sandbox.backend)")
        supervisor = Supervisor(on_give_up=shutdown_self)
        try:
            pool, pool_health = build_pool(cfg, n, supervisor)
        except ValueError as exc:  # a refused Redis login (ConfigError)
            fail(str(exc))
        if http:
            app.state.extra_health = pool_health  # the workers' health is the service's
            warn_if_open(load_tokens(cfg.auth), cfg.reward.host, "reward")
            raise typer.Exit(serve(app, cfg.reward.host, cfg.reward.port, supervisor, pool.stop))
        from protocol.serving import stop_on_signals

        stop_on_signals(supervisor.stop)  # each worker serves its own /healthz (reward.metrics_port)
        supervisor.stop.wait()
        pool.stop()
        raise typer.Exit(1 if supervisor.failed else 0)
