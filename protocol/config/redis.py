from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class RedisConfig(Section):
    url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:port/db). Empty: `ringrl train` starts a local server.")
    username: str = Field(
        default="",
        description="ACL user this part logs in as (empty: `default`, or the user in url). Give each part "
                    "its own (deploy/ does: learner, rollout, reward, driver).")
    password_file: str = Field(
        default="",
        description="File holding the password of `username` (RINGRL_REDIS_PASSWORD overrides it); "
                    "kept out of url so that it is never printed with the config.")
    max_backlog: int = Field(
        default=4096, gt=0,
        description="The one backlog bound, in groups: engines start no new prompt while the rollouts + "
                    "scored streams hold this many (not counting what the learner holds until its next "
                    "checkpoint), and no writer lets its own stream grow past it.")
    claim_idle_ms: int = Field(
        default=30_000, gt=0,
        description="An entry read but not acked for this long is reclaimed by another consumer.")
    audit: bool = Field(
        default=False,
        description="Keep the id of every group written to the rollouts stream in a Redis set "
                    "(ringrl:<run>:audit:written), so a run can account for each group by id. For "
                    "tests and reliability runs: the set grows with the run.")
