"""The rollout service as one process: engine, streaming loop, weight follower, HTTP app, all
under one supervisor, with the drain that runs on SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI

from protocol.auth import load_tokens, warn_if_open
from protocol.config import RunConfig
from protocol.config.run_config import weight_hosts
from protocol.queue import queue_client, redis_probe
from protocol.serving import shutdown_self
from protocol.streams import RunKeys
from protocol.supervise import Supervisor
from protocol.transport.http_pull import HttpReceiver
from rollout_service.engine import Engine
from rollout_service.server import create_app
from rollout_service.streaming import Rollouts
from rollout_service.weights import follow_weights


def build(cfg: RunConfig, model: str) -> tuple[FastAPI, Supervisor, Callable[[], None]]:
    """(app, supervisor, cleanup). A loop that cannot recover, or a dead engine, SIGTERMs the
    process (the same drain as an orchestrator's stop) and `serve` then exits 1."""
    supervisor = Supervisor(on_give_up=shutdown_self)
    tokens, hosts = load_tokens(cfg.auth), weight_hosts(cfg)
    warn_if_open(tokens, cfg.rollout.host, "rollout")
    engine = Engine(model, cfg.rollout)
    rollouts, redis_up = None, None
    if cfg.redis.url:
        client = queue_client(cfg.redis)
        redis_up = redis_probe(client)
        rollouts = Rollouts(engine, client, cfg.run.name, cfg.rollout, cfg.redis.max_backlog, supervisor,
                            audit=cfg.redis.audit)
        if cfg.rollout.follow_weights and cfg.learner.weight_transport == "http":
            receiver = HttpReceiver(connect_timeout_s=cfg.rollout.weight_connect_timeout_s,
                                    headers=tokens.headers(), allowed_hosts=hosts)
            follow_weights(engine, client, RunKeys(cfg.run.name), supervisor, receiver)

    def watch_engine() -> None:  # the engine thread is not restartable in place: replace the process
        while not supervisor.stop.wait(1.0):
            if engine.error is not None:
                supervisor.give_up(f"engine: {type(engine.error).__name__}: {engine.error}")
                return

    supervisor.start("rollout-engine-watch", watch_engine)

    def health() -> dict[str, object]:
        status = {**engine.health(), **supervisor.health()}
        status["ok"] = bool(status["ok"]) and engine.error is None
        if rollouts is not None and redis_up is not None:
            status["rollouts"] = rollouts.stats()
            status["redis"] = redis_up()
            status["ready"] = status["ok"] and status["redis"]
        return status

    app = create_app(engine, rollouts, weight_backend=cfg.learner.broadcast_backend, health=health,
                     tokens=tokens, weight_hosts=hosts)

    def cleanup() -> None:
        t = time.monotonic()
        if rollouts is not None:
            rollouts.stop(cfg.rollout.drain_s)
            s = rollouts.stats()
            print(f"rollout: stopped in {time.monotonic() - t:.1f}s; {s['written']} groups written, "
                  f"{s['handed_back']} handed back", flush=True)
        engine.close()

    return app, supervisor, cleanup
