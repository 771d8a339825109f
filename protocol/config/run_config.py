"""The sections every part reads: one run's identity, the queue, and the three services."""

from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section
from protocol.config.learner import LearnerConfig
from protocol.config.redis import RedisConfig
from protocol.config.reward import RewardConfig
from protocol.config.rollout import RolloutConfig
from protocol.config.run import RunSection


class RunConfig(Section):
    run: RunSection = Field(default_factory=RunSection, description="Run identity and outputs.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="The queue between parts.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Generation side.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Verifiers and sandbox.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="C3PO training side.")
