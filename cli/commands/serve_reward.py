"""`ringrl serve reward CONFIG`: the scoring HTTP server and/or N stream reward workers."""

from __future__ import annotations

import multiprocessing as mp
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
        """Score responses: HTTP API and/or workers consuming the run's rollouts stream."""
        from cli.errors import fail, load_or_fail
        cfg = load_or_fail(config)
        # Without a Redis URL the default is the HTTP server alone; asking for workers is an error.
        n = (cfg.reward.workers if cfg.redis.url else 0) if workers is None else workers
        if n < 0:
            fail("--workers must be >= 0")
        if n and not cfg.redis.url:
            fail("redis.url is required for stream workers (or pass --workers 0)")
        if not http and not n:
            fail("nothing to run: --no-http and 0 workers")
        from reward_service.sandbox import SandboxUnavailable
        from reward_service.worker import main as worker_main

        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker_main, args=(cfg.model_dump_json(), i), daemon=False)
                 for i in range(n)]
        for p in procs:
            p.start()
        try:
            if http:
                import uvicorn

                from reward_service.server import create_app
                try:
                    app = create_app(cfg.reward)
                except SandboxUnavailable as exc:
                    fail(f"{exc} (set reward.sandbox.backend)")
                uvicorn.run(app, host=cfg.reward.host, port=cfg.reward.port, log_level="info")
            else:
                for p in procs:
                    p.join()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(30)
