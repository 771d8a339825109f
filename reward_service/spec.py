"""The reward app's OpenAPI document, made to state what the middleware and protocol's probes do."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from protocol.auth import Tokens
from protocol.openapi import declare_bearer, declare_probes
from reward_service.api import Health
from reward_service.refusals import REFUSALS


def describe(app: FastAPI, tokens: Tokens) -> None:
    """State in the OpenAPI document what the middleware and protocol's probes do: the probes'
    bodies and their 503, the bearer token every operation but /healthz needs (when one is set),
    and its 401/403 on those operations."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            declare_bearer(schema, tokens)
            declare_probes(schema, Health, "ErrorBody", REFUSALS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
