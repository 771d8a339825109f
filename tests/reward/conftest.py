from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol.config.reward import RewardConfig, SandboxConfig
from reward_service.scorer import Scorer

BACKENDS = ["warm", "bwrap", "rlimit"]


def reward_config(backend: str = "warm", **sandbox: object) -> RewardConfig:
    sb = {"backend": backend, "wall_s": 3.0, "cpu_s": 2, **sandbox}
    return RewardConfig(math_workers=2, math_timeout_s=3.0, code_concurrency=2,
                        sandbox=SandboxConfig(**sb))


@pytest.fixture(scope="session", params=BACKENDS)
def scorer(request: pytest.FixtureRequest) -> Iterator[Scorer]:
    # Each backend its own uids: a killed namespace is torn down asynchronously, and its dying
    # processes still count against RLIMIT_NPROC of their uid for a moment.
    s = Scorer(reward_config(request.param), uid_offset=100 + 10 * BACKENDS.index(request.param))
    yield s
    s.close()
    s.sandbox.close()  # the warm backend's sandboxes outlive Scorer.close() until process exit


@pytest.fixture(scope="session")
def default_scorer() -> Iterator[Scorer]:
    s = Scorer(reward_config(), uid_offset=300)
    yield s
    s.close()
    s.sandbox.close()
