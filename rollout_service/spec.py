"""The rollout app's OpenAPI document, made to state what this server does.

Request models are static; what depends on the served engine is marked in them (`engine.BOUND`) and
stated here with the engine's value: token ids below its vocabulary, max_tokens and token prompts
within its context, `n` up to rollout.max_n, the served model names, the hosts weights may come
from. The engine refuses the same values with a 400 naming the field, so the document and the
server agree. Rules JSON Schema can state are stated (exactly one of url/broadcast, a prompt's text
or ids, a reference of the prompt's task); the one it cannot (a prompt's tokens + max_tokens within
the context) is in the descriptions and answered 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from protocol.auth import Tokens
from protocol.openapi import declare_bearer, declare_probes
from rollout_service.engine import BOUND, Engine
from rollout_service.errors import NATIVE, ErrorBody, is_openai
from rollout_service.openai_api import CompletionChunk


class Health(BaseModel):
    """The probes' body: at least `ok`; with the token, the engine's and the loops' state too."""

    ok: bool = Field(description="Alive (healthz) / can serve now (readyz).")
    ready: bool | None = Field(default=None, description="Can serve now (Redis reachable, loops up).")
    version: int | None = Field(default=None, description="Engine weight version.")
    in_flight: int | None = Field(default=None, description="Engine requests running.")
    error: str | None = Field(default=None, description="Why the engine stopped, if it did.")


def _bounds(engine: Engine, names: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """marker -> (the JSON type it bounds, the keywords it sets)."""
    context = engine.max_model_len
    return {
        "token_id": ("integer", {"maximum": engine.vocab_size - 1}),
        "prompt_ids": ("array", {"maxItems": context - 1}),
        "max_tokens": ("integer", {"maximum": context - 1}),
        "n": ("integer", {"maximum": engine.config.max_n}),
        "model": ("string", {"enum": list(names)}),
    }


def _state_bounds(node: Any, bounds: dict[str, tuple[str, dict[str, Any]]]) -> None:
    if isinstance(node, list):
        for item in node:
            _state_bounds(item, bounds)
        return
    if not isinstance(node, dict):
        return
    marker = node.pop(BOUND, None)
    if marker is not None:
        kind, keywords = bounds[marker]
        targets = [b for b in [node, *node.get("anyOf", [])] if b.get("type") == kind]
        if not targets:
            raise KeyError(f"schema bound {marker!r} found no {kind} to bound")
        for t in targets:
            t.pop("exclusiveMaximum", None)
            if kind == "string":  # an enum replaces the length bounds
                t.pop("maxLength", None)
            t.update(keywords)
    for value in node.values():
        _state_bounds(value, bounds)


def _url_pattern(hosts: Collection[str]) -> str:
    names = "|".join(re.escape(f"[{h}]" if ":" in h else h) for h in sorted(hosts))
    return rf"^[hH][tT][tT][pP][sS]?://({names})(:[0-9]{{1,5}})?([/?#][^\s]*)?$"


def describe(app: FastAPI, engine: Engine, names: Sequence[str], weight_hosts: Collection[str],
             tokens: Tokens) -> None:
    """Make `app.openapi()` state this engine's bounds, the weight hosts, the cross-field rules,
    the probes' answers and the bearer token."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _state_bounds(schema, _bounds(engine, names))
            components = schema["components"]["schemas"]
            _weights(components, weight_hosts)
            _references_need_kind(components)
            components.setdefault("ErrorBody", ErrorBody.model_json_schema())
            declare_probes(schema, Health, "ErrorBody", NATIVE)
            _openai(schema, components)
            declare_bearer(schema, tokens)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _weights(components: dict[str, Any], hosts: Collection[str]) -> None:
    request, spec = components["WeightsRequest"], components["BroadcastSpec"]
    # Exactly one source: a string url (with an optional checksum), or a broadcast object, which
    # carries its own checksum (null counts as absent).
    # Each branch excludes the other's fields outright: generators then never mix them.
    request["oneOf"] = [
        {"required": ["url"], "properties": {"url": {"type": "string"}, "broadcast": {"type": "null"}}},
        {"required": ["broadcast"], "properties": {"broadcast": {"type": "object"}, "url": {"type": "null"},
                                                   "checksum": {"type": "null"}}},
    ]
    if hosts:
        spec["properties"]["host"]["enum"] = sorted(hosts)
        spec["properties"]["host"].pop("maxLength", None)
        for branch in request["properties"]["url"].get("anyOf", [request["properties"]["url"]]):
            if branch.get("type") == "string":
                branch["pattern"] = _url_pattern(hosts)


def _references_need_kind(components: dict[str, Any]) -> None:
    # A reference is a tagged union: pydantic needs the tag even where it has a default.
    for name in ("MathReference", "CodeReference"):
        required = components[name].setdefault("required", [])
        if "kind" not in required:
            required.insert(0, "kind")


def _openai(schema: dict[str, Any], components: dict[str, Any]) -> None:
    # The event stream's chunk is no route's response model: add it (and what it uses).
    _, top = models_json_schema([(CompletionChunk, "serialization")],
                                ref_template="#/components/schemas/{model}")
    for name, definition in top.get("$defs", {}).items():
        components.setdefault(name, definition)
    # OpenAI answers a malformed request with 400 (declared), never FastAPI's 422.
    for path, item in schema["paths"].items():
        if is_openai(path):
            for operation in item.values():
                operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, now unused
        others = {k: v for k, v in schema.items() if k != "components"}, \
            {k: v for k, v in components.items() if k != name}
        if name in components and f"#/components/schemas/{name}" not in json.dumps(others):
            del components[name]
