from __future__ import annotations

from protocol.config.base import Section


class LearnerConfig(Section):
    """Settings of the learner side (filled in by its issue)."""
