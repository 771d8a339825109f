"""Tiny models built once per session, and one in-process vLLM engine per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

from learner.models.tiny import build_tiny_model  # noqa: E402
from protocol.config.rollout import RolloutConfig  # noqa: E402
from rollout_service.engine import Engine  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """(arch, seed) -> model folder, built lazily: use `model_dir(arch, seed)`."""
    return {}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]):
    def build(arch: str = "qwen3_moe", seed: int = 0) -> Path:
        key = f"{arch}-{seed}"
        if key not in tiny_models:
            tiny_models[key] = build_tiny_model(tmp_path_factory.mktemp(key), arch, seed=seed)
        return tiny_models[key]
    return build


def engine_config(**overrides: object) -> RolloutConfig:
    base: dict[str, object] = dict(dtype="float32", max_model_len=512, n=4, max_tokens=16, seed=1234)
    base.update(overrides)
    return RolloutConfig(**base)


@pytest.fixture(scope="module")
def engine(model_dir) -> Iterator[Engine]:
    with Engine(str(model_dir("qwen3_moe")), engine_config()) as e:
        yield e
