"""The scoring HTTP server: POST /v1/score, GET /healthz, GET /readyz, GET /metrics, OpenAPI at /docs."""

# No `from __future__ import annotations`: the route's body type is built from the config at
# run time, and FastAPI reads annotations as objects.

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from protocol.auth import OPEN_PATH, BearerAuth, Tokens
from protocol.body_limit import BodyLimit
from protocol.config.reward import RewardConfig
from protocol.metrics import PROBES, mount_observability
from protocol.schema import TaskKind
from reward_service.api import ErrorBody, Health, Scorable, ScoreResponse, ScoreResult, score_request_model
from reward_service.scorer import Item, Scorer, reward_of

REFUSALS = {
    400: "The body could not be parsed (e.g. JSON nested too deep, a number too long).",
    401: "No bearer token, or not a valid one (field: authorization).",
    403: "The token is valid but not for this endpoint (field: authorization).",
    413: "The body is over reward.max_request_bytes.",
    422: "An item breaks a rule of the request schema (size bounds, Unicode, cross-field rules); "
         "`field` names it. Nothing in the batch was scored.",
}
_UNION_TAGS = {"math", "code"}  # pydantic puts a discriminated item's tag in the error location


def _field(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for i, p in enumerate(loc):
        if (i == 0 and p == "body") or (p in _UNION_TAGS and i and isinstance(loc[i - 1], int)):
            continue
        # A key of the request (an unknown field) is echoed: it must encode, and stay short.
        parts.append(str(p).encode("utf-8", "backslashreplace").decode()[:80])
    return ".".join(parts) or "body"


def _problem(error: Any) -> tuple[str, str]:
    """(field, message) of one pydantic error, never quoting the input (it may not encode)."""
    loc, msg, kind = list(error["loc"]), str(error["msg"]), error["type"]
    if kind == "json_invalid":
        return "body", f"not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _field([*loc, "task"]), "must be 'math' or 'code'"
    if msg.startswith("Value error, "):  # a model validator: "<field>: <why>" or just "<why>"
        msg = msg.removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and head.isidentifier():
            loc, msg = [*loc, head], rest
    return _field(loc), msg


def _refusal(status: int, field: str | None, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(detail=detail, field=field).model_dump_json(exclude_none=True)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def create_app(config: RewardConfig, scorer: Scorer | None = None, tokens: Tokens = Tokens()) -> FastAPI:
    """The app owns `scorer` (made from config if not given) and closes it on shutdown; `tokens`
    guard every route but /healthz."""
    scorer = scorer or Scorer(config)
    ScoreRequest = score_request_model(config)  # noqa: N806 (a class)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        scorer.close()

    app = FastAPI(title="ringrl reward service", version="1", lifespan=lifespan,
                  description="Binary rewards: Math-Verify for math, sandboxed tests for code. Every "
                              "refusal is a 4xx with an ErrorBody naming the field; an item the "
                              "verifier fails on scores 0 with its own status, never failing its batch.")
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes, setting="reward.max_request_bytes")
    app.add_middleware(BearerAuth, tokens=tokens)  # added last: runs first, before a body is read
    app.state.scorer = scorer

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default echoes the offending input, which may not encode as UTF-8 (a lone
        # surrogate) or JSON (NaN): that would turn the 422 into a 500.
        problems = [_problem(e) for e in exc.errors()]
        return _refusal(422, problems[0][0], "; ".join(f"{f}: {m}" for f, m in problems[:20]))

    @app.exception_handler(HTTPException)
    async def refused(_: Request, exc: HTTPException) -> Response:
        # 400 (an unparseable body) and a 413 found while reading belong to the body; 404/405 to the path.
        field = "body" if exc.status_code in (400, 413) else None
        detail = exc.detail if exc.status_code != 400 else "body: could not be parsed"
        return _refusal(exc.status_code, field, str(detail), exc.headers)

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={code: {"model": ErrorBody, "description": d} for code, d in REFUSALS.items()})
    async def score(req: ScoreRequest) -> ScoreResponse:  # type: ignore[valid-type]
        # Awaiting the scorer's futures holds no worker thread per request: under many clients
        # the threadpool stays free for /healthz and /readyz.
        items: list[Scorable] = req.items  # type: ignore[attr-defined]
        futures = scorer.submit([Item(TaskKind(it.task), it.response, it.reference()) for it in items])
        verdicts = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        scorer.sync_kills()
        return ScoreResponse(results=[ScoreResult(reward=reward_of(v), status=v.status,
                                                  detail=v.detail) for v in verdicts])

    def health() -> dict[str, Any]:
        status = scorer.health()
        extra = getattr(app.state, "extra_health", None)  # set by the service: its stream workers
        if extra is not None:
            more = extra()
            status = {**status, **more, "ok": status["ok"] and more["ok"],
                      "ready": status["ok"] and more.get("ready", more["ok"])}
        return status

    mount_observability(app, scorer.registry, health)
    _describe(app, tokens)
    return app


def _describe(app: FastAPI, tokens: Tokens) -> None:
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
