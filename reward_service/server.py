"""The scoring HTTP server: POST /v1/score, GET /healthz, GET /metrics, OpenAPI at /docs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from protocol.auth import BearerAuth, Tokens
from protocol.body_limit import BodyLimit
from protocol.config.reward import RewardConfig
from protocol.metrics import mount_observability
from reward_service.api import ScoreRequest, ScoreResponse, ScoreResult
from reward_service.scorer import Item, Scorer, reward_of


def create_app(config: RewardConfig, scorer: Scorer | None = None, tokens: Tokens = Tokens()) -> FastAPI:
    """The app owns `scorer` (made from config if not given) and closes it on shutdown; `tokens`
    guard every route but /healthz."""
    scorer = scorer or Scorer(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        scorer.close()

    app = FastAPI(title="ringrl reward service", version="1", lifespan=lifespan,
                  description="Binary rewards: Math-Verify for math, sandboxed tests for code.")
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes, setting="reward.max_request_bytes")
    app.add_middleware(BearerAuth, tokens=tokens)  # added last: runs first, before a body is read

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default echoes the offending input, which may not encode as UTF-8 (a lone
        # surrogate): that would turn a 422 into a 500. Location, message and type name the field.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return Response(json.dumps({"detail": errors}), status_code=422, media_type="application/json")
    app.state.scorer = scorer

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(req: ScoreRequest) -> ScoreResponse:
        if len(req.items) > config.max_batch:
            raise HTTPException(422, f"items: {len(req.items)} items, more than "
                                     f"reward.max_batch={config.max_batch}")
        verdicts = scorer.score([Item(it.task, it.response, it.reference()) for it in req.items])
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
    return app
