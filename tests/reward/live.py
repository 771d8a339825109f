"""A reward app served by uvicorn on loopback, for tests that speak real HTTP to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from protocol.auth import Tokens
from reward_service.server import create_app
from tests.conftest import free_port
from tests.reward.conftest import reward_config


@contextmanager
def running_server(tokens: Tokens = Tokens(), **reward: object) -> Iterator[str]:
    """The base URL of a reward server with the test config, `reward` fields overridden."""
    cfg = reward_config().model_copy(update=reward)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, tokens=tokens), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
