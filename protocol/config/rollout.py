from __future__ import annotations

from protocol.config.base import Section


class RolloutConfig(Section):
    """Settings of the rollout side (filled in by its issue)."""
