from __future__ import annotations

from collections.abc import Iterator

import pytest

from recipe.verdicts import standalone_scorer
from reward_service.scorer import Scorer


@pytest.fixture(scope="session")
def scorer() -> Iterator[Scorer]:
    """The reward service's Scorer as `ringrl eval` builds it (reward defaults, warm sandbox)."""
    s = standalone_scorer()
    yield s
    s.close()
