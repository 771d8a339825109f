"""The rollout HTTP API (FastAPI): rollouts into the stream, OpenAI-style completions, weights."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator

from protocol.auth import BearerAuth, Tokens
from protocol.body_limit import BodyLimit
from protocol.metrics import mount_observability
from protocol.transport import MAX_VERSION, WeightError, WeightVersion
from protocol.transport.broadcast import BroadcastReceiver
from protocol.transport.http_pull import HttpReceiver
from rollout_service.engine import MAX_SEED, MAX_TEMPERATURE, Engine, InvalidRequest, Sampling
from rollout_service.streaming import Prompt, Rollouts, Stopping
from rollout_service.weights import load_version

log = logging.getLogger("ringrl.rollout")


MAX_PROMPTS = 1024
"""Prompts in one request (either endpoint)."""


class RolloutRequest(BaseModel):
    prompts: list[Prompt] = Field(min_length=1, max_length=MAX_PROMPTS, description="Prompts; one group each.")


class RolloutAccepted(BaseModel):
    group_ids: list[str] = Field(description="Ids the groups will carry in the rollouts stream.")
    version: int = Field(description="Engine weight version at acceptance.")


class CompletionRequest(BaseModel):
    """The subset of OpenAI's /v1/completions this server honours."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(default=16, gt=0, le=1 << 20)
    temperature: float = Field(default=1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, gt=0, description="Responses per prompt, at most rollout.max_n.")
    logprobs: int | None = Field(default=None, ge=0, le=5)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class BroadcastSpec(BaseModel):
    host: str = Field(max_length=253, description="Address of the learner's TCPStore (rank 0); one of "
                                                  "rollout.weight_hosts.")
    port: int = Field(ge=1, le=65535)
    rank: int = Field(ge=1, description="This engine's rank in the group (the learner is 0).")
    world_size: int = Field(ge=2)


class WeightsRequest(BaseModel):
    version: int = Field(ge=0, le=MAX_VERSION, description="The version to load.")
    url: str | None = Field(default=None, max_length=2048,
                            description="Pull a safetensors file from here (a host in rollout.weight_hosts) ...")
    checksum: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                 description="... and check it against this (sha256, hex).")
    broadcast: BroadcastSpec | None = Field(default=None, description="... or receive it by broadcast.")

    @model_validator(mode="after")
    def _one_source(self) -> "WeightsRequest":
        if (self.url is None) == (self.broadcast is None):
            raise ValueError("url: give exactly one of url or broadcast")
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
    app.add_middleware(BodyLimit, max_bytes=engine.config.max_request_bytes, setting="rollout.max_request_bytes")
    # Added last, so it runs first: a stranger's body is never read.
    app.add_middleware(BearerAuth, tokens=tokens, admin_routes={("POST", "/v1/weights")})
    names = {engine.model_path, served_model_name or engine.config.served_model_name}
    hosts = frozenset(weight_hosts or engine.config.weight_hosts or ("127.0.0.1", "localhost", "::1"))
    connect_s = engine.config.weight_connect_timeout_s
    group = BroadcastReceiver()
    pull = HttpReceiver(connect_timeout_s=connect_s, headers=tokens.headers(), allowed_hosts=hosts)
    # One update at a time, and a second one is refused rather than queued: a slow or unreachable
    # source must not park request threads behind it.
    updating = threading.Lock()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if p != "body"]
        msg = str(err["msg"])
        # A model validator reports "Value error, <field>: <why>": surface that field.
        if msg.startswith("Value error, ") and ": " in msg:
            msg = msg[len("Value error, "):]
            field, msg = msg.split(": ", 1)
            loc = loc + [field]
        field = ".".join(loc) or "body"
        return _error(422, field, msg)

    @app.exception_handler(InvalidRequest)
    async def refused(_: Request, exc: InvalidRequest) -> JSONResponse:
        return _error(400, exc.field, str(exc).split(": ", 1)[1])

    @app.exception_handler(WeightError)
    async def bad_weights(_: Request, exc: WeightError) -> JSONResponse:
        field, msg = str(exc).split(": ", 1)
        return _error(400, field, msg)

    @app.post("/v1/rollouts", status_code=202, response_model=RolloutAccepted)
    def post_rollouts(req: RolloutRequest) -> Any:
        if rollouts is None:
            return _error(503, "rollouts", "this server has no Redis stream configured")
        ids = []
        for i, p in enumerate(req.prompts):
            try:
                ids.append(rollouts.submit(p))
            except InvalidRequest as exc:
                return _error(400, f"prompts.{i}.{exc.field}", str(exc).split(": ", 1)[1])
            except queue.Full:
                return _error(429, "prompts", f"{len(ids)} of {len(req.prompts)} accepted "
                                              f"({ids}); the pending queue is full, retry later")
            except Stopping:
                return _error(503, "prompts", f"{len(ids)} of {len(req.prompts)} accepted "
                                              f"({ids}); the server is shutting down")
        return RolloutAccepted(group_ids=ids, version=engine.version)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        if req.model not in names:
            return _error(404, "model", f"unknown model {req.model!r}; this server serves {sorted(names)}")
        prompts = _prompts(engine, req.prompt)
        try:
            sampling = Sampling(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                stop=[req.stop] if isinstance(req.stop, str) else req.stop, seed=req.seed)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InvalidRequest(".".join(str(x) for x in err["loc"]) or "stop", err["msg"]) from None
        for p in prompts:  # all refused before any is started
            engine.check(p, req.n, sampling)
        futures = [engine.submit(p, req.n, sampling) for p in prompts]
        results = [await asyncio.wrap_future(f) for f in futures]
        choices, completion_tokens = [], 0
        for responses in results:
            for r in responses:
                completion_tokens += len(r.token_ids)
                choice: dict[str, Any] = {"index": len(choices), "text": r.text,
                                          "finish_reason": r.finish_reason.value, "logprobs": None}
                if req.logprobs is not None:
                    toks = [engine.tokenizer.decode([int(t)]) for t in r.token_ids]
                    offsets, pos = [], 0
                    for t in toks:
                        offsets.append(pos)
                        pos += len(t)
                    choice["logprobs"] = {
                        "tokens": toks, "token_logprobs": [float(x) for x in r.logprobs],
                        "top_logprobs": [{t: float(x)} for t, x in zip(toks, r.logprobs)],
                        "text_offset": offsets}
                choices.append(choice)
        prompt_tokens = sum(len(p) for p in prompts)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": req.model, "choices": choices,
                "system_fingerprint": f"policy-v{results[0][0].policy_version}",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/v1/weights", response_model=WeightsState)
    def get_weights() -> WeightsState:
        return WeightsState(version=engine.version, checksum=engine.checksum,
                            updated_at=engine.updated_at)

    @app.post("/v1/weights", response_model=WeightsState)
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
    return app


def _prompts(engine: Engine, prompt: Any) -> list[list[int]]:
    """OpenAI's four prompt forms as token-id lists; empty ones are refused by name."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise InvalidRequest("prompt", "is empty")
    if len(items) > MAX_PROMPTS:
        raise InvalidRequest("prompt", f"{len(items)} prompts, more than {MAX_PROMPTS}")
    out = []
    for p in items:
        ids = engine.encode(p) if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            raise InvalidRequest("prompt", "is empty")
        out.append(ids)
    return out

