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
    # Each scorer leases its own uids (reward_service/sandbox/uids.py), so the backends' scorers,
    # alive at once for the session, never share one.
    s = Scorer(reward_config(request.param))
    yield s
    s.close()
    s.sandbox.close()  # the warm backend's sandboxes outlive Scorer.close() until process exit


@pytest.fixture(scope="session")
def default_scorer() -> Iterator[Scorer]:
    s = Scorer(reward_config())
    yield s
    s.close()
    s.sandbox.close()
