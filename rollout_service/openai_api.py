"""The OpenAI surface of the rollout server: POST /v1/completions (whole, or streamed as server-sent
events token by token) and GET /v1/models, in OpenAI's request, response, chunk and error shapes.

What OpenAI's completions API defines and this server does not honour is refused by name (400,
code `unsupported_parameter`) instead of being ignored, except at the value that means "off"
(`echo: false`, `best_of: 1`, `presence_penalty: 0`, ...), which some clients always send. Fields
OpenAI does not define are refused too (`unknown_parameter`). Refusals are `errors.OpenAIError`.

Streaming is real: each response's tokens go out as the engine samples them (vLLM's DELTA outputs,
asked for on these requests only; the training path keeps FINAL_ONLY). A client that goes away
stops its responses in the engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from starlette.concurrency import run_in_threadpool

from rollout_service.engine import (
    BOUND,
    MAX_SEED,
    MAX_TEMPERATURE,
    Engine,
    InvalidRequest,
    Piece,
    Sampling,
    json_int,
)
from rollout_service.errors import (
    OPENAI,
    OpenAIError,
    error_responses,
    pick,
    refuse,
    utf8_only,
)

MAX_PROMPTS = 1024
"""Prompts in one request (the same bound as POST /v1/rollouts)."""

UNSUPPORTED = {
    "best_of": "only 1, or leave it unset",
    "echo": "only false, or leave it unset",
    "suffix": "leave it unset",
    "logit_bias": "only {}, or leave it unset",
    "presence_penalty": "only 0, or leave it unset",
    "frequency_penalty": "only 0, or leave it unset",
    "user": "leave it unset",
}
"""OpenAI's completion fields this server does not honour -> the values it accepts for them."""

Text = Annotated[str, StringConstraints(min_length=1)]
TokenId = Annotated[json_int(ge=0, lt=2**31), Field(json_schema_extra={BOUND: "token_id"})]
TokenIds = Annotated[list[TokenId], Field(min_length=1, json_schema_extra={BOUND: "prompt_ids"})]
StopText = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _false(value: bool) -> bool:
    if value:
        raise ValueError("only false")
    return value


def _off(what: str) -> Any:
    return Field(default=None, description=f"OpenAI's; not honoured here: {what}.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool | None = Field(
        default=None, description="Send a last chunk with `usage` (and `choices: []`) before [DONE].")


class CompletionRequest(BaseModel):
    """The part of OpenAI's /v1/completions this server honours; anything else is refused by name."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as the schema says: no "1" for 1

    model: str = Field(max_length=4096, json_schema_extra={BOUND: "model"},
                       description="A name from GET /v1/models (404 otherwise).")
    prompt: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]) = Field(
        description="Text, texts, token ids, or lists of token ids (at most 1024 prompts). Each "
                    "prompt's tokens plus max_tokens must fit the context (400, context_length_exceeded).")
    max_tokens: json_int(ge=1, le=1 << 20) | None = Field(default=16, json_schema_extra={BOUND: "max_tokens"},
                                   description="Most new tokens per choice (null: 16).")
    temperature: float | None = Field(default=1.0, ge=0, le=MAX_TEMPERATURE, description="0-2 (null: 1).")
    top_p: float | None = Field(default=1.0, gt=0, le=1, description="(0, 1] (null: 1).")
    n: json_int(ge=1, le=1 << 20) | None = Field(default=1, json_schema_extra={BOUND: "n"},
                          description="Choices per prompt, at most rollout.max_n (null: 1).")
    logprobs: json_int(ge=0, le=5) | None = Field(default=None,
                                 description="Log-probs of the sampled tokens and of the k likeliest.")
    stop: StopText | Annotated[list[StopText], Field(max_length=16)] | None = Field(
        default=None, description="Up to 16 stop strings of 1-256 characters.")
    seed: json_int(ge=0, le=MAX_SEED) | None = Field(default=None,
                             description="Choice i of a prompt samples with seed + i.")
    stream: bool | None = Field(default=False, description="Server-sent events, token by token.")
    stream_options: StreamOptions | None = Field(
        default=None, description="With stream: include_usage. (A whole response always has usage.)")
    best_of: json_int(ge=1, le=1) | None = Field(default=None, description="OpenAI's; not honoured: only 1.")
    echo: Annotated[bool, AfterValidator(_false), WithJsonSchema({"type": "boolean", "enum": [False]})] | None = \
        _off("only false")
    suffix: None = _off("leave it unset")
    logit_bias: dict[str, int] | None = Field(default=None, max_length=0,
                                              description="OpenAI's; not honoured: only {}.")
    presence_penalty: float | None = Field(default=None, ge=0, le=0, description="OpenAI's; not honoured: only 0.")
    frequency_penalty: float | None = Field(default=None, ge=0, le=0, description="OpenAI's; not honoured: only 0.")
    user: None = _off("leave it unset")

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        return utf8_only(data)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Logprobs(BaseModel):
    tokens: list[str] = Field(description="Each sampled token, decoded.")
    token_logprobs: list[float] = Field(description="Each sampled token's log-prob (at least -9999).")
    top_logprobs: list[dict[str, float]] = Field(
        description="Per token: the `logprobs` likeliest tokens and the sampled one.")
    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")


class Choice(BaseModel):
    index: int = Field(description="prompt index * n + choice index.")
    text: str
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[Choice]
    system_fingerprint: str = Field(description="policy-v<weight version that sampled the choices>.")
    usage: Usage


class ChunkChoice(BaseModel):
    index: int
    text: str = Field(description="The text sampled since this choice's previous chunk.")
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length"] | None = Field(description="Set on a choice's last chunk.")


class CompletionChunk(BaseModel):
    """One server-sent event (`data: <chunk>`) of a streamed completion; the stream ends with
    `data: [DONE]`. An engine failure mid-stream is sent as `data: {"error": ...}` before [DONE]."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str
    usage: Usage | None = Field(default=None, description="With stream_options.include_usage: null "
                                                          "but on the last chunk (whose choices are []).")


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


def _sse_schema() -> dict[str, Any]:
    """One event of the stream (OpenAPI 3.1 reads the schema of text/event-stream as one event's)."""
    return {
        "type": "object",
        "description": "Server-sent events when `stream` is true: `data: <CompletionChunk>` per event "
                       "(an engine failure: `data: <OpenAIError>`), then `data: [DONE]`.",
        "required": ["data"],
        "properties": {"data": {"anyOf": [
            {"type": "string", "const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": [
                {"$ref": "#/components/schemas/CompletionChunk"},
                {"$ref": "#/components/schemas/OpenAIError"}]}},
        ]}},
    }


def router(engine: Engine, served_model_name: str) -> APIRouter:
    """The OpenAI routes over `engine`; the model answers to `served_model_name` and to its path."""
    api = APIRouter(tags=["OpenAI"])
    names = list(dict.fromkeys([served_model_name, engine.model_path]))
    created = int(time.time())

    def model_card(name: str) -> Model:
        return Model(id=name, object="model", created=created, owned_by="ringrl")

    @api.get("/v1/models", response_model=ModelList,
             responses=error_responses(OpenAIError, pick(OPENAI, 401, 403)))
    def list_models() -> ModelList:
        """The served model, under its served name and its path (OpenAI's list shape)."""
        return ModelList(object="list", data=[model_card(n) for n in names])

    @api.get("/v1/models/{model:path}", response_model=Model,
             responses=error_responses(OpenAIError, pick(OPENAI, 401, 403, 404)))
    def retrieve_model(request: Request, model: str = Path(json_schema_extra={BOUND: "model"},
                                                          description="A name from GET /v1/models.")) -> Any:
        if model not in names:
            return refuse(request, 404, "model", f"the model does not exist here; this server serves {names}",
                          "model_not_found")
        return model_card(model)

    completion_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "The completion (JSON), or its chunks as server-sent events (stream: true).",
              "content": {"text/event-stream": {"schema": _sse_schema()}}},
        **error_responses(OpenAIError, pick(OPENAI, 400, 401, 403, 404, 413, 503)),
    }

    @api.post("/v1/completions", response_model=Completion, responses=completion_responses)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        if req.model not in names:
            return refuse(request, 404, "model", f"the model does not exist here; this server serves {names}",
                          "model_not_found")
        n = req.n or 1
        try:
            sampling = Sampling(max_tokens=req.max_tokens or 16,
                                temperature=1.0 if req.temperature is None else req.temperature,
                                top_p=1.0 if req.top_p is None else req.top_p,
                                stop=[req.stop] if isinstance(req.stop, str) else req.stop, seed=req.seed)
        except ValidationError as exc:  # the request model's bounds should pre-empt these
            err = exc.errors()[0]
            raise InvalidRequest(".".join(str(x) for x in err["loc"]) or "stop", err["msg"]) from None
        # Tokenising up to max_request_bytes of text is work: off the event loop.
        prompts = await run_in_threadpool(_checked_prompts, engine, req.prompt, n, sampling)
        stream = bool(req.stream)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[int, Piece | BaseException]] = asyncio.Queue()

        def sink(j: int) -> Any:
            return lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, (j, piece))

        def on_done(f: Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                loop.call_soon_threadsafe(pieces.put_nowait, (-1, f.exception()))

        futures: list[Future] = []
        try:
            for j, p in enumerate(prompts):
                futures.append(engine.submit_pieces(p, n, sampling, sink(j), stream=stream, logprobs=req.logprobs))
                futures[-1].add_done_callback(on_done)
        except RuntimeError as exc:  # the engine has stopped
            for f in futures:
                f.cancel()
            return refuse(request, 503, None, str(exc))
        reply = _Reply(req.model, n, req.logprobs is not None, prompt_tokens=sum(len(p) for p in prompts))
        if stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_events(reply, pieces, futures, len(prompts) * n, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except RuntimeError as exc:  # the engine stopped while these ran
            return refuse(request, 503, None, str(exc))
        finally:
            for f in futures:
                f.cancel()  # a no-op once done; stops the rest if this request is cancelled
        while not pieces.empty():
            j, piece = pieces.get_nowait()
            if isinstance(piece, Piece):
                reply.add(j, piece)
        return JSONResponse(reply.whole())

    return api


def _checked_prompts(engine: Engine, prompt: Any, n: int, sampling: Sampling) -> list[list[int]]:
    """OpenAI's four prompt forms as token-id lists, each checked by the engine (all refused before
    any is started)."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    out = []
    for i, p in enumerate(items):
        ids = engine.encode(p) if isinstance(p, str) else [int(t) for t in p]
        try:
            engine.check(ids, n, sampling)
        except InvalidRequest as exc:
            if len(items) > 1 and exc.field == "prompt":
                raise InvalidRequest(f"prompt.{i}", str(exc).split(": ", 1)[1]) from None
            raise
        out.append(ids)
    return out


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -inf; vLLM's OpenAI server clamps the same way


class _Reply:
    """Builds the OpenAI objects of one request from the engine's pieces."""

    def __init__(self, model: str, n: int, logprobs: bool, prompt_tokens: int) -> None:
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.model, self.n, self.logprobs = model, n, logprobs
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.version: int | None = None
        self.offsets: dict[int, int] = {}  # choice -> characters of its decoded tokens so far
        self.parts: dict[int, list[Piece]] = {}

    def _logprobs(self, index: int, piece: Piece) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        tokens = piece.tokens or []
        offsets, pos = [], self.offsets.get(index, 0)
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        self.offsets[index] = pos
        return {"tokens": tokens, "token_logprobs": [_finite(x) for x in piece.logprobs or []],
                "top_logprobs": [{k: _finite(v) for k, v in d.items()} for d in piece.top_logprobs or []],
                "text_offset": offsets}

    def add(self, j: int, piece: Piece) -> int:
        """Record a piece of prompt j; returns its choice index."""
        self.completion_tokens += len(piece.token_ids)
        if self.version is None:
            self.version = piece.version
        index = j * self.n + piece.index
        self.parts.setdefault(index, []).append(piece)
        return index

    def _head(self, version: int | None) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "system_fingerprint": f"policy-v{version if version is not None else 0}"}

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def whole(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.parts):
            parts = self.parts[index]
            merged = Piece(0, [t for p in parts for t in p.token_ids], "".join(p.text for p in parts),
                           parts[-1].finish_reason, parts[-1].version,
                           tokens=[t for p in parts for t in p.tokens or []],
                           logprobs=[x for p in parts for x in p.logprobs or []],
                           top_logprobs=[d for p in parts for d in p.top_logprobs or []])
            choices.append({"index": index, "text": merged.text, "logprobs": self._logprobs(index, merged),
                            "finish_reason": _finish(merged)})
        return {**self._head(self.version), "choices": choices, "usage": self.usage()}

    def chunk(self, index: int, piece: Piece, usage: bool) -> dict[str, Any]:
        choice = {"index": index, "text": piece.text, "logprobs": self._logprobs(index, piece),
                  "finish_reason": _finish(piece) if piece.finish_reason is not None else None}
        return {**self._head(piece.version), "choices": [choice], **({"usage": None} if usage else {})}

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._head(self.version), "choices": [], "usage": self.usage()}


def _finish(piece: Piece) -> str:
    return "length" if piece.finish_reason is not None and piece.finish_reason.value == "length" else "stop"


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _events(reply: _Reply, pieces: asyncio.Queue, futures: Sequence[Future], total: int,
                  usage: bool) -> AsyncIterator[bytes]:
    """The event stream: a chunk per piece as the engine samples it; cancelled (client gone) or
    not, the responses still running are stopped when it ends."""
    left = total
    try:
        while left:
            j, piece = await pieces.get()
            if not isinstance(piece, Piece):  # the engine stopped mid-stream
                yield _sse({"error": {"message": f"{type(piece).__name__}: {piece}", "type": "server_error",
                                      "param": None, "code": "engine_unavailable"}})
                break
            if piece.finish_reason is not None:
                left -= 1
            index = reply.add(j, piece)
            if piece.text or piece.token_ids or piece.finish_reason is not None:
                yield _sse(reply.chunk(index, piece, usage))
        else:
            if usage:
                yield _sse(reply.usage_chunk())
        yield b"data: [DONE]\n\n"
    finally:
        for f in futures:
            f.cancel()
