"""Redis key names shared by the parts. One consumer group per stream (see queue.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    def returned(self) -> str:
        """Prompts a stopping rollout server accepted but did not turn into groups (JSON), for the
        driver to resubmit."""
        return f"ringrl:{self.run}:returned"

    @property
    def plan(self) -> str:
        """Hash the services-mode driver writes: the stage the learner trains and its last step."""
        return f"ringrl:{self.run}:plan"

    @property
    def audit_written(self) -> str:
        """Set of every group id written to `rollouts` (only with redis.audit)."""
        return f"ringrl:{self.run}:audit:written"

    @property
    def steps(self) -> str:
        """One entry per learner step: its metrics (JSON), for the services-mode driver's log."""
        return f"ringrl:{self.run}:steps"

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


@dataclass(frozen=True)
class Plan:
    """What the services-mode driver tells the learner: train `stage`'s groups (others are
    counted stale) with its budget and lr, up to step `until_step`."""

    stage: str
    until_step: int
    token_budget: int
    lr: float

    def to_redis(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> "Plan":
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(f["stage"], int(f["until_step"]), int(f["token_budget"]), float(f["lr"]))
