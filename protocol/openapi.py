"""What every part's OpenAPI document says about protocol's own routes and middleware: the probes
(protocol/metrics.py) and the bearer token (protocol/auth.py). FastAPI cannot see either: the
probes answer raw JSON, the token is checked before routing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from protocol.auth import OPEN_PATH, Tokens
from protocol.metrics import PROBES


def declare_bearer(schema: dict[str, Any], tokens: Tokens) -> None:
    """With a token set, every operation but GET /healthz requires it."""
    if not tokens.enabled:
        return
    schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["security"] = [] if path == OPEN_PATH else [{"bearer": []}]


def declare_probes(schema: dict[str, Any], health: type[BaseModel], error_schema: str,
                   refusals: Mapping[int, str]) -> None:
    """/healthz and /readyz answer `health` with 200 (up) or 503 (down); /readyz also 401/403
    with the component `error_schema`, described by `refusals`."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Health"] = health.model_json_schema()
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
    error = {"application/json": {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}}
    for path in PROBES:
        responses = schema["paths"][path]["get"]["responses"]
        responses["200"] = {"description": "Up.", "content": body}
        responses["503"] = {"description": "Down (healthz: restart it; readyz: take it out of rotation).",
                            "content": body}
        if path != OPEN_PATH:  # /healthz is open (a stranger gets liveness alone)
            for code in (401, 403):
                responses[str(code)] = {"description": refusals[code], "content": error}
