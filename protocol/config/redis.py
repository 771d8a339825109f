from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class RedisConfig(Section):
    url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:port/db). Empty: `ringrl train` starts a local server.")
    rollouts_max_len: int = Field(
        default=4096, gt=0,
        description="Bound on the raw-groups backlog; the rollout side pauses above it.")
    scored_max_len: int = Field(
        default=4096, gt=0,
        description="Bound on the scored-groups backlog; reward workers pause above it.")
    claim_idle_ms: int = Field(
        default=30_000, gt=0,
        description="An entry read but not acked for this long is reclaimed by another consumer.")
