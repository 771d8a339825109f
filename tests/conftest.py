"""Shared fixtures: a real Redis server (CI's, or one started here), free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from protocol.netaddr import free_port  # noqa: F401  (tests import it from here)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` (ASGI) served by uvicorn on a free loopback port, from a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """RINGRL_TEST_REDIS_URL if set (CI starts one), else a redis-server started for the session."""
    url = os.environ.get("RINGRL_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisProcess(str(tmp_path_factory.mktemp("redis")), persist=False)
    yield server.url
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A binary client on an emptied database."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class RedisProcess:
    """A redis-server of the test's own. With `persist` (AOF, fsync always) a test may kill it and
    start it again on the same port and data, as an operator's restart would."""

    def __init__(self, workdir: str, persist: bool = True, args: tuple[str, ...] = ()) -> None:
        """`args`: more redis-server options (e.g. --aclfile)."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("tests need a Redis server: install redis-server or set RINGRL_TEST_REDIS_URL")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.aof = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *self.aof,
             "--dir", self.workdir, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except (redis.AuthenticationError, redis.ResponseError):  # up, refusing a stranger
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    r = RedisProcess(str(tmp_path_factory.mktemp("own-redis")))
    yield r
    r.kill()
