from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class AuthConfig(Section):
    """Bearer tokens of the HTTP APIs. The tokens themselves never appear in a config: they are read
    from the environment (RINGRL_API_TOKEN, RINGRL_ADMIN_TOKEN) or from the files named here."""

    token_file: str = Field(
        default="",
        description="File holding the bearer token every HTTP endpoint but /healthz requires (rollout, "
                    "reward, the learner's weights, every /metrics and /readyz); clients of the APIs "
                    "send it too. RINGRL_API_TOKEN overrides it. Neither set: the APIs are open (for "
                    "loopback only: a service bound elsewhere warns at start).")
    admin_token_file: str = Field(
        default="",
        description="File holding the token for requests that change what a server serves (POST "
                    "/v1/weights on a rollout server); RINGRL_ADMIN_TOKEN overrides it. Unset: those "
                    "requests need the API token.")
    metrics_open: bool = Field(
        default=False,
        description="Serve /metrics without a token (for a scraper that cannot send one).")
