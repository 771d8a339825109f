"""The sections every part reads: one run's identity, the queue, the three services, their tokens."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, model_validator

from protocol.config.auth import AuthConfig
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
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Bearer tokens of the HTTP APIs.")

    @model_validator(mode="after")
    def _replay_needs_routing(self) -> RunConfig:
        if self.learner.router_replay == "r3" and not self.rollout.record_routing:
            raise ValueError("learner.router_replay: r3 needs rollout.record_routing: true (the groups "
                             "must carry the engine's routing to replay)")
        return self


def weight_hosts(cfg: RunConfig) -> list[str]:
    """Where an engine accepts weights from: rollout.weight_hosts, or else the learner's addresses."""
    if cfg.rollout.weight_hosts:
        return list(cfg.rollout.weight_hosts)
    lc = cfg.learner
    hosts = [urlsplit(lc.public_url).hostname or "" if lc.public_url else "", lc.broadcast_host,
             "" if lc.http_host in ("0.0.0.0", "::") else lc.http_host]
    return sorted({h for h in hosts if h})
