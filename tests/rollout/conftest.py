"""Tiny models built once per session, one in-process vLLM engine per module, a file server."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

from learner.models.tiny import build_tiny_model  # noqa: E402
from protocol.config.rollout import RolloutConfig  # noqa: E402
from rollout_service.engine import Engine  # noqa: E402
from rollout_service.streaming import Rollouts  # noqa: E402

ModelDir = Callable[..., Path]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    """model_dir(arch, seed) -> a tiny random HF model folder, built once per session."""
    built: dict[str, Path] = {}

    def build(arch: str = "qwen3_moe", seed: int = 0) -> Path:
        key = f"{arch}-{seed}"
        if key not in built:
            built[key] = build_tiny_model(tmp_path_factory.mktemp(key), arch, seed=seed)  # type: ignore[arg-type]
        return built[key]
    return build


def engine_config(**overrides: object) -> RolloutConfig:
    base: dict[str, object] = dict(dtype="float32", max_model_len=512, n=4, max_tokens=16, seed=1234)
    base.update(overrides)
    return RolloutConfig(**base)


@pytest.fixture(scope="module")
def engine(model_dir: ModelDir) -> Iterator[Engine]:
    with Engine(str(model_dir("qwen3_moe")), engine_config()) as e:
        yield e


RUN = "rtest"
"""The run the streaming tests write to (redis_client empties its database around each test)."""


@pytest.fixture
def rollouts(engine: Engine, redis_client: redis.Redis) -> Iterator[Rollouts]:
    """A streaming loop over the module's engine, with a backlog bound of 8 groups."""
    r = Rollouts(engine, redis_client, RUN, engine_config(), max_backlog=8)
    yield r
    r.stop()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(folder, base URL): a real HTTP server on loopback serving the folder (the pull path)."""
    root = tmp_path_factory.mktemp("served")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def publish(file_server: tuple[Path, str], model: Path, name: str) -> str:
    """Put a model's safetensors where the file server serves it; returns its URL."""
    root, base = file_server
    (root / name).write_bytes((model / "model.safetensors").read_bytes())
    return f"{base}/{name}"
