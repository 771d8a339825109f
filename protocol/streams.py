"""Redis key names shared by the parts. One consumer group per stream (see queue.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunKeys:
    """All Redis keys of one run live under `ringrl:{run}:`, so runs can share a server."""

    run: str

    @property
    def rollouts(self) -> str:
        """Raw groups: rollout service -> reward workers."""
        return f"ringrl:{self.run}:rollouts"

    @property
    def scored(self) -> str:
        """Scored groups: reward workers -> learner."""
        return f"ringrl:{self.run}:scored"

    @property
    def weights(self) -> str:
        """Hash holding the latest published WeightVersion."""
        return f"ringrl:{self.run}:weights"

    @property
    def learner_state(self) -> str:
        """Hash holding the learner's progress (policy version, step), read for backpressure."""
        return f"ringrl:{self.run}:learner"


REWARD_GROUP = "reward-workers"
"""Consumer group reading `rollouts`."""

LEARNER_GROUP = "learner"
"""Consumer group reading `scored`."""


def dead_letter(stream: str) -> str:
    """Where entries of `stream` that cannot be decoded go, with the reason."""
    return f"{stream}:dead"
