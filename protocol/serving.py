"""How every service process runs and stops: logging, an HTTP app under uvicorn, signals, exit code.

uvicorn catches SIGTERM/SIGINT to shut its server down gracefully and afterwards re-raises the
signal into the handler that was installed before it started. With Python's default handler that
kills the process before any cleanup after `uvicorn.run` (the rollout server lost its accepted
groups, the reward server orphaned its stream workers). `serve` installs a handler first, so the
re-raise lands in it and the cleanup runs; a supervisor that gave up ends the process with 1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from protocol.supervise import Supervisor

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    """One line per event on stderr, for every ringrl logger (uvicorn keeps its own)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health poll drowns the rest


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop` (a process without an HTTP server: the main thread waits on it)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def shutdown_self(_: str = "") -> None:
    """Ask this process to stop as an orchestrator would (SIGTERM), so the same drain runs."""
    os.kill(os.getpid(), signal.SIGTERM)


def serve(app: Any, host: str, port: int, supervisor: Supervisor,
          cleanup: Callable[[], None] | None = None) -> int:
    """Serve `app` until SIGTERM/SIGINT (or the supervisor gives up), run `cleanup`, return the exit code."""
    import uvicorn

    stop_on_signals(supervisor.stop)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    try:
        server.run()
    finally:
        supervisor.stop.set()
        if cleanup is not None:
            cleanup()
    if supervisor.failed:
        logging.getLogger("ringrl").critical("exiting non-zero: %s", supervisor.failed)
        return 1
    return 0
