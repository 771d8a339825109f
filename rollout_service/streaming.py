"""Prompts in, groups out: admits prompts to the engine under backpressure and writes each group
to the rollouts stream the moment its last response finishes (no batch barrier)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable

import redis
from pydantic import BaseModel, Field, model_validator

from protocol.codec import encode_group
from protocol.config.rollout import RolloutConfig
from protocol.queue import Backpressure, StreamProducer
from protocol.schema import Group, Reference, Response, TaskKind
from protocol.streams import LEARNER_GROUP, RunKeys
from rollout_service.engine import Engine, InvalidRequest, Sampling


class Prompt(BaseModel):
    """One prompt to sample a group for. Give the text or the token ids (or both)."""

    prompt_id: str = Field(default="", description="Caller's id of the prompt (data row).")
    task: TaskKind = Field(description="Task kind: decides the verifier.")
    reference: Reference = Field(description="What the reward side checks responses against.")
    prompt: str | None = Field(default=None, description="Prompt text (tokenised by the engine).")
    prompt_token_ids: list[int] | None = Field(default=None, description="Prompt as token ids.")
    stage: str = Field(default="", description="Run stage the group belongs to.")
    n: int | None = Field(default=None, gt=0, description="Responses to sample; default rollout.n.")
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling overrides.")

    @model_validator(mode="after")
    def _has_prompt(self) -> "Prompt":
        if not self.prompt and not self.prompt_token_ids:
            raise ValueError("prompt: give a non-empty prompt or prompt_token_ids")
        if self.reference.kind != self.task.value:
            raise ValueError(f"reference: kind {self.reference.kind!r} does not match task {self.task.value!r}")
        return self


class Gate:
    """Why new prompts must wait right now, if they must: stream backlog or learner staleness."""

    def __init__(self, client: redis.Redis, keys: RunKeys, max_backlog: int, engine: Engine) -> None:
        self.client, self.keys, self.engine = client, keys, engine
        self.backpressure = Backpressure(client, [keys.rollouts, keys.scored], max_backlog,
                                         custody=(keys.scored, LEARNER_GROUP))

    def learner_bound(self) -> tuple[int, int] | None:
        """(learner version, its staleness bound) from the learner's state hash; None before it starts.

        The bound is the learner's own setting, read from it, so the two sides cannot disagree.
        """
        version, bound = self.client.hmget(self.keys.learner_state, ["version", "max_staleness"])
        return None if version is None or bound is None else (int(version), int(bound))

    def reason(self) -> str | None:
        if self.backpressure.backlog() >= self.backpressure.max_backlog:
            return "backlog"
        learner = self.learner_bound()
        if learner is not None and self.engine.version - learner[0] > learner[1]:
            return "staleness"
        return None


class Rollouts:
    """The streaming loop of one engine into the run's rollouts stream.

    `submit` accepts prompts at once (up to max_pending_prompts); an admission thread starts
    them while the gate is open and fewer than max_inflight_groups are generating; a writer
    thread appends each finished group to the stream as soon as it completes.
    """

    def __init__(self, engine: Engine, client: redis.Redis, run: str, config: RolloutConfig,
                 max_backlog: int = 4096) -> None:
        self.engine, self.client, self.config = engine, client, config
        self.keys = RunKeys(run)
        self.metrics = engine.metrics
        self.gate = Gate(client, self.keys, max_backlog, engine)
        self.producer = StreamProducer(client, self.keys.rollouts, max_backlog)
        self._pending: queue.Queue[tuple[Group, Prompt, float]] = queue.Queue(config.max_pending_prompts)
        self._finished: queue.Queue[Group] = queue.Queue()
        self._slots = threading.Semaphore(config.max_inflight_groups)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active = 0  # submitted, group not yet written
        self.written = 0
        self.tokens_written = 0
        self.error: BaseException | None = None
        self._threads = [threading.Thread(target=self._guard, args=(f,), daemon=True, name=n)
                         for f, n in ((self._admit_loop, "rollout-admit"), (self._write_loop, "rollout-write"))]
        for t in self._threads:
            t.start()

    # ---- public API ---------------------------------------------------------------------

    def submit(self, prompt: Prompt, block: bool = False, timeout: float | None = None) -> str:
        """Queue one prompt; returns the id its group will carry. Raises InvalidRequest for input
        the engine refuses, queue.Full when max_pending_prompts are already waiting (block=False)."""
        ids = prompt.prompt_token_ids or self.engine.encode(prompt.prompt or "")
        group = Group(prompt_id=prompt.prompt_id, task=prompt.task, stage=prompt.stage,
                      prompt_text=prompt.prompt or "", prompt_token_ids=ids,
                      reference=prompt.reference, responses=[])
        self._validate(ids, prompt)
        with self._lock:
            self._active += 1
        try:
            self._pending.put((group, prompt, time.monotonic()), block=block, timeout=timeout)
        except queue.Full:
            with self._lock:
                self._active -= 1
            raise
        self.metrics.pending.set(self._pending.qsize())
        return group.group_id

    def run(self, prompts: Iterable[Prompt]) -> int:
        """Feed an iterable of prompts (blocking while the loop is full); returns how many."""
        count = 0
        for p in prompts:
            while not self._stop.is_set():
                try:
                    self.submit(p, block=True, timeout=0.5)
                    count += 1
                    break
                except queue.Full:
                    continue
            if self._stop.is_set():
                break
        return count

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every submitted prompt's group is in the stream."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._active:
            if self.error is not None:
                raise RuntimeError(f"rollout loop stopped: {self.error}")
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def stats(self) -> dict[str, int]:
        return {"pending": self._pending.qsize(), "active": self._active, "written": self.written,
                "tokens_written": self.tokens_written, "version": self.engine.version}

    def health(self) -> dict[str, object]:
        return {"ok": self.error is None, **self.stats(),
                **({"error": f"{type(self.error).__name__}: {self.error}"} if self.error else {})}

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    # ---- internals ----------------------------------------------------------------------

    def _validate(self, ids: list[int], prompt: Prompt) -> None:
        if not ids:
            raise InvalidRequest("prompt", "is empty after tokenisation")
        max_tokens = prompt.sampling.max_tokens or self.config.max_tokens
        if len(ids) + max_tokens > self.engine.max_model_len:
            raise InvalidRequest("max_tokens", f"prompt ({len(ids)}) + max_tokens ({max_tokens}) "
                                               f"exceeds the model context ({self.engine.max_model_len})")

    def _guard(self, target: object) -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:  # keep the reason for /healthz; the loop is dead
            self.error = exc
            raise

    def _wait_gate(self) -> None:
        reason = self.gate.reason()
        while reason is not None and not self._stop.is_set():
            self.metrics.paused.labels(reason).set(1)
            time.sleep(self.config.poll_s)
            reason = self.gate.reason()
        for r in ("backlog", "staleness"):
            self.metrics.paused.labels(r).set(0)

    def _admit_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._pending.get(timeout=0.1)]
            except queue.Empty:
                continue
            # Whatever else is waiting is admitted in the same pass (one gate check), so the
            # engine's first step already batches them instead of ramping up prompt by prompt.
            while len(batch) < self.config.max_inflight_groups:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            self._wait_gate()
            for group, prompt, queued_at in batch:
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                self.metrics.queue_wait.observe(time.monotonic() - queued_at)
                future = self.engine.submit(group.prompt_token_ids, prompt.n, prompt.sampling)
                future.add_done_callback(lambda f, g=group: self._finish(g, f))
            self.metrics.pending.set(self._pending.qsize())

    def _finish(self, group: Group, future: object) -> None:
        self._slots.release()
        try:
            responses: list[Response] = future.result()  # type: ignore[attr-defined]
        except BaseException as exc:  # engine died: nothing to write, surface it
            self.error = exc
            return
        group.responses = responses
        group.finished_at = time.time()
        self._finished.put(group)

    def _write_loop(self) -> None:
        while not self._stop.is_set() or not self._finished.empty():
            try:
                batch = [self._finished.get(timeout=0.1)]
            except queue.Empty:
                continue
            while True:  # whatever else finished meanwhile goes in the same pipeline
                try:
                    batch.append(self._finished.get_nowait())
                except queue.Empty:
                    break
            self.producer.produce_raw([encode_group(g) for g in batch])
            self.metrics.groups.inc(len(batch))
            with self._lock:
                self._active -= len(batch)
                self.written += len(batch)
                self.tokens_written += sum(len(r.token_ids) for g in batch for r in g.responses)
