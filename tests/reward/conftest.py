from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol.config.reward import RewardConfig, SandboxConfig
from reward_service.scorer import Scorer

BACKENDS = ["bwrap", "rlimit"]


def reward_config(backend: str = "bwrap", **sandbox: object) -> RewardConfig:
    sb = {"backend": backend, "wall_s": 3.0, "cpu_s": 2, **sandbox}
    return RewardConfig(math_workers=2, math_timeout_s=3.0, code_concurrency=2,
                        sandbox=SandboxConfig(**sb))


@pytest.fixture(scope="session", params=BACKENDS)
def scorer(request: pytest.FixtureRequest) -> Iterator[Scorer]:
    s = Scorer(reward_config(request.param), uid_offset=100)
    yield s
    s.close()


@pytest.fixture(scope="session")
def bwrap_scorer() -> Iterator[Scorer]:
    s = Scorer(reward_config("bwrap"), uid_offset=200)
    yield s
    s.close()
