"""The rollout HTTP API (FastAPI): rollouts into the stream, OpenAI-style completions, weights."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.auth import BearerAuth, Tokens
from protocol.body_limit import BodyLimit
from protocol.metrics import mount_observability
from protocol.transport import MAX_VERSION, WeightVersion
from protocol.transport.broadcast import BroadcastReceiver
from protocol.transport.http_pull import HttpReceiver
from rollout_service import errors
from rollout_service.engine import Engine, InvalidRequest, json_int
from rollout_service.errors import NATIVE, ErrorBody, error_responses, pick
from rollout_service.openai_api import MAX_PROMPTS, UNSUPPORTED
from rollout_service.openai_api import router as openai_router
from rollout_service.spec import describe
from rollout_service.streaming import Prompt, Rollouts, Stopping
from rollout_service.weights import load_version

log = logging.getLogger("ringrl.rollout")


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS, description="Prompts; one group each.")


class RolloutAccepted(BaseModel):
    group_ids: list[str] = Field(description="Ids the groups will carry in the rollouts stream.")
    version: int = Field(description="Engine weight version at acceptance.")


class BroadcastSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as the schema says
    host: str = Field(max_length=253, description="Address of the learner's TCPStore (rank 0); one of "
                                                  "rollout.weight_hosts.")
    port: json_int(ge=1, le=65535)
    rank: json_int(ge=1) = Field(description="This engine's rank in the group (the learner is 0).")
    world_size: json_int(ge=2)


class WeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: json_int(ge=0, le=MAX_VERSION) = Field(description="The version to load.")
    url: str | None = Field(default=None, max_length=2048,
                            description="Pull a safetensors file from here (a host in rollout.weight_hosts) ...")
    checksum: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                 description="... and check it against this (sha256, hex).")
    broadcast: BroadcastSpec | None = Field(default=None, description="... or receive it by broadcast.")

    @model_validator(mode="after")
    def _one_source(self) -> "WeightsRequest":
        if (self.url is None) == (self.broadcast is None):
            raise ValueError("url: give exactly one of url or broadcast")
        if self.broadcast is not None and self.checksum is not None:
            raise ValueError("checksum: only with url (a broadcast carries its own checksum)")
        return self


class WeightsState(BaseModel):
    version: int
    checksum: str
    updated_at: float
    update_seconds: float | None = None


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": f"{field}: {message}", "field": field}, status_code=status)


def create_app(engine: Engine, rollouts: Rollouts | None = None,
               served_model_name: str | None = None, weight_backend: str = "gloo",
               health: Callable[[], dict[str, Any]] | None = None, tokens: Tokens = Tokens(),
               weight_hosts: Collection[str] | None = None) -> FastAPI:
    """The rollout API over one engine; without `rollouts` (no Redis) POST /v1/rollouts is 503.
    `health` (default: the engine's and the loop's) answers /healthz and /readyz. `tokens` guard
    every route but /healthz (POST /v1/weights needs the admin one); weight updates come only from
    `weight_hosts` (default: rollout.weight_hosts, else this host's loopback)."""
    app = FastAPI(title="ringrl rollout service", version="1",
                  description="vLLM generation for RL: groups into Redis, OpenAI completions, "
                              "versioned weight updates.")
    app.add_middleware(BodyLimit, max_bytes=engine.config.max_request_bytes, setting="rollout.max_request_bytes",
                       render=errors.render)
    # Added last, so it runs first: a stranger's body is never read.
    app.add_middleware(BearerAuth, tokens=tokens, admin_routes={("POST", "/v1/weights")}, render=errors.render)
    served = served_model_name or engine.config.served_model_name
    hosts = frozenset(weight_hosts or engine.config.weight_hosts or ("127.0.0.1", "localhost", "::1"))
    connect_s = engine.config.weight_connect_timeout_s
    group = BroadcastReceiver()
    pull = HttpReceiver(connect_timeout_s=connect_s, headers=tokens.headers(), allowed_hosts=hosts)
    # One update at a time, and a second one is refused rather than queued: a slow or unreachable
    # source must not park request threads behind it.
    updating = threading.Lock()

    # Every refusal (validation, InvalidRequest, WeightError, 404/405/413) in its surface's shape.
    errors.install(app, unsupported=UNSUPPORTED)

    @app.post("/v1/rollouts", status_code=202, response_model=RolloutAccepted,
              responses=error_responses(ErrorBody, {
                  **pick(NATIVE, 400, 401, 403, 413, 422),
                  429: "The pending queue is full (rollout.max_pending_prompts); `detail` lists the "
                       "ids of the prompts accepted before it filled. Retry the rest later.",
                  503: "No Redis stream configured, or the server is shutting down (`detail` lists "
                       "the ids accepted before)."}))
    def post_rollouts(req: RolloutRequest) -> Any:
        if rollouts is None:
            return _error(503, "rollouts", "this server has no Redis stream configured")
        checked = []
        for i, p in enumerate(req.prompts):  # every prompt checked before any is queued: a 400 accepts none
            try:
                checked.append(p.model_copy(update={"prompt_token_ids": rollouts.check(p)}))
            except InvalidRequest as exc:
                return _error(400, f"prompts.{i}.{exc.field}", str(exc).split(": ", 1)[1])
        ids: list[str] = []
        for p in checked:
            try:
                ids.append(rollouts.submit(p))
            except queue.Full:
                return _error(429, "prompts", f"{len(ids)} of {len(req.prompts)} accepted "
                                              f"({ids}); the pending queue is full, retry later")
            except Stopping:
                return _error(503, "prompts", f"{len(ids)} of {len(req.prompts)} accepted "
                                              f"({ids}); the server is shutting down")
        return RolloutAccepted(group_ids=ids, version=engine.version)

    app.include_router(openai_router(engine, served))

    @app.get("/v1/weights", response_model=WeightsState,
             responses=error_responses(ErrorBody, pick(NATIVE, 401, 403)))
    def get_weights() -> WeightsState:
        return WeightsState(version=engine.version, checksum=engine.checksum,
                            updated_at=engine.updated_at)

    @app.post("/v1/weights", response_model=WeightsState,
              responses=error_responses(ErrorBody, {
                  **pick(NATIVE, 400, 401, 403, 413, 422),
                  409: "`version` is not newer than the engine's, another update is in progress, or "
                       "the learner broadcast another version (loaded regardless)."}))
    def post_weights(req: WeightsRequest) -> Any:
        if req.version <= engine.version:
            return _error(409, "version", f"engine already runs version {engine.version}")
        if req.url is not None:
            pull.check_url(req.url)
        if req.broadcast is not None and req.broadcast.host not in hosts:
            return _error(400, "broadcast.host", "weights come only from the learner's hosts "
                                                 "(rollout.weight_hosts)")
        if not updating.acquire(blocking=False):
            return _error(409, "version", "another weight update is in progress")
        try:
            version, seconds = _load(req)
        finally:
            updating.release()
        log.info("weights: loaded version %d in %.2fs (%s)", version, seconds,
                 "pull" if req.broadcast is None else "broadcast")
        if version != req.version:  # loaded regardless: the learner sent what it has
            return _error(409, "version", f"asked for {req.version}, learner broadcast {version}")
        return WeightsState(version=engine.version, checksum=engine.checksum,
                            updated_at=engine.updated_at, update_seconds=seconds)

    def _load(req: WeightsRequest) -> tuple[int, float]:
        record = WeightVersion(version=req.version, url=req.url, checksum=req.checksum)
        if (b := req.broadcast) is None:
            return load_version(engine, pull, record)
        group.join(b.host, b.port, b.rank, b.world_size, weight_backend, connect_timeout_s=connect_s)
        # A broadcast is loaded as it lands (no second copy of the model); the learner waits for it.
        return load_version(engine, group, record, buffer=False)

    def default_health() -> dict[str, Any]:
        status = engine.health()
        if rollouts is not None:
            loop = rollouts.health()
            status = {**status, "ok": status["ok"] and loop["ok"], "rollouts": loop}
        return status

    mount_observability(app, engine.metrics.registry, health or default_health)
    describe(app, engine, [served, engine.model_path], hosts, tokens)
    return app

