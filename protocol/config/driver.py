"""`ringrl serve driver`: runs the stages of a TrainConfig against the services."""

from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class DriverConfig(Section):
    """Services mode's driver: feeds prompts, moves through the stages, measures held-out accuracy."""

    rollout_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"],
        description="Base URLs of the rollout servers; prompts are spread over those that answer.")
    reward_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the reward API (held-out scoring).")
    host: str = Field(default="127.0.0.1", description="Bind address of the driver's /healthz and /metrics.")
    port: int = Field(default=8003, ge=0, le=65535, description="Port of the driver's /healthz and /metrics.")
    prompts_per_request: int = Field(
        default=16, gt=0, description="Prompts per POST /v1/rollouts (the servers' own gates pace them).")
    max_queued_prompts: int = Field(
        default=64, gt=0,
        description="Most prompts the driver keeps queued on each rollout server beyond what it "
                    "generates; the rollout's staleness gate, not this, bounds the data's age.")
    poll_s: float = Field(default=0.5, gt=0, description="How often the driver reads the learner's progress.")
    http_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one HTTP call to a service.")
    stage_timeout_s: float = Field(
        default=0.0, ge=0,
        description="A stage that has not finished after this many seconds fails the run (0: no limit).")
