"""The reward service as one process: the scoring HTTP app and N stream-worker processes it
supervises (a dead worker is restarted; one that keeps dying makes the service exit non-zero),
with every worker stopped before the process ends."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from typing import Any

from protocol.config import RunConfig
from protocol.queue import queue_client, redis_probe
from protocol.supervise import Supervisor
from reward_service.worker import main as worker_main

log = logging.getLogger("ringrl.reward")
PR_SET_PDEATHSIG = 1


def _worker_entry(config_json: str, index: int) -> None:
    # The kernel SIGTERMs the worker when its parent dies, even by SIGKILL: no orphan keeps
    # scoring (and holding its port) beside a restarted replica.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    worker_main(config_json, index)


class WorkerPool:
    """Stream-worker processes, each restarted when it dies, as one supervised loop."""

    def __init__(self, cfg: RunConfig, n: int, supervisor: Supervisor) -> None:
        self.cfg, self.supervisor = cfg, supervisor
        self._ctx = mp.get_context("spawn")
        self.procs: list[Any] = [None] * n
        self.restarts = [0] * n
        if n:
            supervisor.start("reward-workers", self._watch)

    def _spawn(self, i: int) -> None:
        p = self._ctx.Process(target=_worker_entry, args=(self.cfg.model_dump_json(), i), daemon=False,
                              name=f"reward-worker-{i}")
        p.start()
        self.procs[i] = p

    def _watch(self) -> None:
        for i, p in enumerate(self.procs):  # first start, or a restart after one died
            if p is None or not p.is_alive():
                self._spawn(i)
        while not self.supervisor.stop.wait(0.5):
            for i, p in enumerate(self.procs):
                if not p.is_alive():
                    self.restarts[i] += 1
                    # A worker that keeps dying is the supervisor's to give up on: raising counts it.
                    raise RuntimeError(f"stream worker {i} exited with {p.exitcode} "
                                       f"(restart {self.restarts[i]})")

    def alive(self) -> list[bool]:
        return [p is not None and p.is_alive() for p in self.procs]

    def stop(self, timeout_s: float = 30.0) -> None:
        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()  # SIGTERM: the worker finishes the batch it holds, then exits
        end = time.monotonic() + timeout_s
        for p in self.procs:
            if p is not None:
                p.join(max(0.0, end - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join(5)


def build_pool(cfg: RunConfig, n: int, supervisor: Supervisor) -> tuple[WorkerPool, Callable[[], dict[str, Any]]]:
    """The pool and a health probe covering it and Redis (workers' health is the service's)."""
    pool = WorkerPool(cfg, n, supervisor)
    redis_up = redis_probe(queue_client(cfg.redis)) if cfg.redis.url and n else None

    def health() -> dict[str, Any]:
        alive = pool.alive()
        status: dict[str, Any] = {**supervisor.health(), "workers_alive": alive, "worker_restarts": pool.restarts,
                                  "worker_pids": [p.pid if p is not None else None for p in pool.procs]}
        if redis_up is not None:
            status["redis"] = redis_up()
            status["ready"] = status["ok"] and status["redis"] and all(alive)
        return status

    return pool, health
