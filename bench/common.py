"""Shared bench helpers: a throwaway Redis server and timing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from rich.console import Console

    from protocol.config.train import TrainConfig


@contextmanager
def redis_server() -> Iterator[str]:
    """RINGRL_BENCH_REDIS_URL if set, else a private redis-server on a free loopback port."""
    url = os.environ.get("RINGRL_BENCH_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("error: benchmarks need redis-server on PATH (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", d],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def best_of(repeats: int, fn: Callable[[], None]) -> float:
    """Fastest wall time of `repeats` runs: the least noisy estimate on a shared machine."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def start_checkpoint(cfg: TrainConfig, out: Path, console: Console, sft_steps: int) -> str:
    """The RL start of a bench run: the run config's tiny model distilled for `sft_steps` steps
    (one checkpoint, no selection), shared by every variant the bench compares."""
    from recipe.driver import distil, prepare_model

    init = prepare_model(cfg.model, cfg.tasks, cfg.run.seed, out, console)
    sft = cfg.sft.model_copy(update={"init_model": init, "output_dir": str(out / "sft"), "max_steps": sft_steps,
                                     "max_minutes": 0, "save_every_steps": 0, "save_every_minutes": 0})
    return distil(sft, cfg.tasks, console)[-1]
