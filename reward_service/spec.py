"""The reward app's OpenAPI document, made to state what the middleware and protocol's probes do."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from protocol.auth import OPEN_PATH, Tokens
from protocol.metrics import PROBES
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
            if tokens.enabled:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, operations in schema["paths"].items():
                    for operation in operations.values():
                        operation["security"] = [] if path == OPEN_PATH else [{"bearer": []}]
            body = {"application/json": {"schema": Health.model_json_schema()}}
            for path in PROBES:
                responses = schema["paths"][path]["get"]["responses"]
                responses["200"] = {"description": "Up.", "content": body}
                responses["503"] = {"description": "Down (healthz: restart it; readyz: "
                                                   "take it out of rotation).", "content": body}
                if path != OPEN_PATH:
                    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                    for code in (401, 403):
                        responses[str(code)] = {"description": REFUSALS[code], "content": error}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
