"""The scoring HTTP server: POST /v1/score, GET /healthz, GET /readyz, GET /metrics, OpenAPI at /docs."""

# No `from __future__ import annotations`: the route's body type is built from the config at
# run time, and FastAPI reads annotations as objects.

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from protocol.auth import BearerAuth, Tokens
from protocol.body_limit import BodyLimit
from protocol.config.reward import RewardConfig
from protocol.metrics import mount_observability
from protocol.schema import TaskKind
from reward_service import refusals
from reward_service.api import ErrorBody, Scorable, ScoreResponse, ScoreResult, score_request_model
from reward_service.scorer import Item, Scorer, reward_of
from reward_service.spec import describe


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

    refusals.install(app)

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={code: {"model": ErrorBody, "description": d} for code, d in refusals.REFUSALS.items()})
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
    describe(app, tokens)
    return app
