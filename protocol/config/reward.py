from __future__ import annotations

from protocol.config.base import Section


class RewardConfig(Section):
    """Settings of the reward side (filled in by its issue)."""
