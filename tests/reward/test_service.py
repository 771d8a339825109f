"""`ringrl serve reward` as a process: a dead stream worker is restarted; one that keeps dying makes
the service report not-ready and exit 1; SIGTERM stops every worker; a Redis restart pauses the
workers, it does not end them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from protocol.codec import decode_group
from protocol.queue import FIELD, StreamProducer, connect
from protocol.streams import RunKeys
from tests.conftest import RedisProcess, free_port
from tests.reward.test_worker import _groups

RUN = "reward-service"


def _start(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = {"run": {"name": RUN}, "redis": {"url": redis_url},
           "reward": {"port": port, "workers": 1, "sandbox": {"backend": "rlimit"}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("ringrl")
    proc = subprocess.Popen([str(exe), "serve", "reward", str(tmp_path / "run.yaml")],
                            stdout=open(tmp_path / "out.log", "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _until(lambda: _health(base, "/readyz") is not None, 60, proc)
    return proc, base


def _health(base: str, path: str = "/healthz") -> dict | None:
    try:
        r = httpx.get(base + path, timeout=3)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _until(cond, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the service exited with {proc.returncode}")
        time.sleep(0.1)
    pytest.fail("condition not met in time")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_dead_worker_is_restarted_and_sigterm_stops_every_worker(tmp_path: Path, redis_url: str) -> None:
    proc, base = _start(tmp_path, redis_url)
    try:
        pid = _health(base)["worker_pids"][0]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        _until(lambda: (h := _health(base, "/readyz")) is not None and h["worker_restarts"] == [1], 60, proc)
        new_pid = _health(base)["worker_pids"][0]  # type: ignore[index]
        assert new_pid != pid and _alive(new_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not _alive(new_pid)
    finally:
        proc.kill()


def test_a_worker_that_keeps_dying_makes_the_service_exit_1(tmp_path: Path, redis_url: str) -> None:
    proc, base = _start(tmp_path, redis_url)
    try:
        end = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < end:  # kill each worker as it comes back
            h = _health(base)
            pid = h["worker_pids"][0] if h is not None else None
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        assert proc.wait(30) == 1
        assert b"giving up" in (tmp_path / "out.log").read_bytes()
    finally:
        proc.kill()


def test_workers_outlive_a_redis_restart(tmp_path: Path, own_redis: RedisProcess) -> None:
    proc, base = _start(tmp_path, own_redis.url)
    keys = RunKeys(RUN)
    try:
        client = connect(own_redis.url)
        StreamProducer(client, keys.rollouts).produce(_groups(4))
        _until(lambda: client.xlen(keys.scored) == 4, 60, proc)
        own_redis.kill()
        _until(lambda: (h := _health(base)) is not None and h.get("ready") is False, 30, proc)
        own_redis.start()
        StreamProducer(client, keys.rollouts).produce(_groups(8)[4:])
        _until(lambda: client.xlen(keys.scored) == 8, 60, proc)
        assert sorted(decode_group(f[FIELD]).group_id for _, f in client.xrange(keys.scored)) == \
            sorted(f"g{i}" for i in range(8))
        _until(lambda: _health(base, "/readyz") is not None, 30, proc)
        assert _health(base)["worker_restarts"] == [0]  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
