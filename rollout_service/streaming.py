"""Prompts in, groups out: admits prompts to the engine under backpressure and writes each group
to the rollouts stream the moment its last response finishes (no batch barrier)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Annotated, Any

import redis
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from protocol.codec import encode_group
from protocol.config.rollout import RolloutConfig
from protocol.queue import Backpressure, StreamProducer
from protocol.schema import Group, Reference, Response, TaskKind
from protocol.streams import LEARNER_GROUP, RunKeys
from protocol.supervise import Supervisor
from rollout_service.engine import BOUND, Engine, InvalidRequest, Sampling, json_int
from rollout_service.errors import utf8_only

log = logging.getLogger("ringrl.rollout")


_PROMPT_RULES = {
    # The validator's cross-field rules, stated in JSON Schema for clients and fuzzers.
    "allOf": [
        {"anyOf": [{"required": ["prompt"], "properties": {"prompt": {"type": "string", "minLength": 1}}},
                   {"required": ["prompt_token_ids"],
                    "properties": {"prompt_token_ids": {"type": "array", "minItems": 1}}}]},
        {"oneOf": [{"properties": {"task": {"const": kind},
                                   "reference": {"required": ["kind"], "properties": {"kind": {"const": kind}}}}}
                   for kind in ("math", "code")]},
    ],
}


class Prompt(BaseModel):
    """One prompt to sample a group for. Give the text or the token ids (or both: the ids are used),
    non-empty; `reference.kind` must be `task`. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_PROMPT_RULES)

    prompt_id: str = Field(default="", max_length=1024, description="Caller's id of the prompt (data row).")
    group_id: str = Field(
        default="", max_length=64, pattern=r"^[A-Za-z0-9_-]*$",
        description="Id the group will carry (empty: a new one). A caller that issues a prompt again "
                    "after losing the engine it sent it to reuses the id: if the first group was written "
                    "after all, the learner drops the second by id, so no group trains twice.")
    task: Annotated[TaskKind, Strict(False)] = Field(description="Task kind: decides the verifier.")
    reference: Reference = Field(description="What the reward side checks responses against.")
    prompt: str | None = Field(default=None, description="Prompt text (tokenised by the engine).")
    prompt_token_ids: list[Annotated[json_int(ge=0, lt=2**31), Field(json_schema_extra={BOUND: "token_id"})]] | None = Field(
        default=None, json_schema_extra={BOUND: "prompt_ids"},
        description="Prompt as token ids, inside the vocabulary; with max_tokens within the context.")
    stage: str = Field(default="", max_length=1024, description="Run stage the group belongs to.")
    n: json_int(gt=0) | None = Field(default=None, json_schema_extra={BOUND: "n"},
                          description="Responses to sample (at most rollout.max_n); default rollout.n.")
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling overrides.")

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        return utf8_only(data)

    @model_validator(mode="after")
    def _has_prompt(self) -> Prompt:
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

    def learner(self) -> dict[str, int] | None:
        """The learner's version, staleness bound and group counters; None before it starts.

        The bound is the learner's own setting, read from it, so the two sides cannot disagree.
        """
        fields = ["version", "max_staleness", "groups_in", "steps"]
        values = self.client.hmget(self.keys.learner_state, fields)
        if values[0] is None or values[1] is None:
            return None
        return {k: int(v or 0) for k, v in zip(fields, values)}

    def stage(self) -> str | None:
        """The stage a services-mode driver's plan trains now (None without a driver)."""
        raw = self.client.hget(self.keys.plan, "stage")
        return raw.decode() if raw else None

    def reason(self, inflight: int = 0) -> str | None:
        """`inflight`: groups this server is generating, not yet in the stream."""
        backlog = self.backpressure.backlog()
        if backlog + inflight >= self.backpressure.max_backlog:  # what generates now lands there too
            return "backlog"
        learner = self.learner()
        if learner is None:
            return None
        bound, lag = learner["max_staleness"], learner["version"] - self.engine.version
        if abs(lag) > bound:  # behind: what it generates now is dropped on arrival
            return "staleness"
        # A group admitted now trains after the groups ahead of it: at the learner's recent rate of
        # groups per step, that is `ahead / per_step` steps later. Admit only while it will still be
        # within the bound, so the data's age does not depend on how fast prompts are fed.
        if learner["steps"]:
            per_step = learner["groups_in"] / learner["steps"]
            if backlog + inflight >= max(1.0, (bound - max(lag, 0)) * per_step):
                return "staleness"
        return None


class Rollouts:
    """The streaming loop of one engine into the run's rollouts stream.

    `submit` accepts prompts at once (up to max_pending_prompts); an admission loop starts them while
    the gate is open and fewer than max_inflight_groups are generating; a writer loop appends each
    finished group to the stream as soon as it completes. Both run under `supervisor`: an error is
    logged and the loop restarts where it was (the batch it held is kept). `stop(drain_s)` refuses
    new prompts, lets the groups in flight finish for up to `drain_s`, writes them, and hands the
    rest back (the `returned` stream) so that nothing accepted is lost.
    """

    def __init__(self, engine: Engine, client: redis.Redis, run: str, config: RolloutConfig,
                 max_backlog: int = 4096, supervisor: Supervisor | None = None, audit: bool = False) -> None:
        self.engine, self.client, self.config = engine, client, config
        self.keys = RunKeys(run)
        self.metrics = engine.metrics
        self.gate = Gate(client, self.keys, max_backlog, engine)
        self.producer = StreamProducer(client, self.keys.rollouts, max_backlog,
                                       audit_set=self.keys.audit_written if audit else None)
        self.supervisor = supervisor or Supervisor()
        self._pending: queue.Queue[tuple[Group, Prompt, float]] = queue.Queue(config.max_pending_prompts)
        self._finished: queue.Queue[Group] = queue.Queue()
        # A slot is held from the start of generation until the group is in the stream (or handed
        # back): while the writer waits on a full stream, finished groups do not pile up behind it.
        self._slots = threading.Semaphore(config.max_inflight_groups)
        self._held = 0  # slots held: groups generating or finished and not yet written
        self._stop = threading.Event()  # admission ends
        self._closing = threading.Event()  # submit refuses
        self._lock = threading.Lock()
        self._admitting: list[tuple[Group, Prompt, float]] = []  # taken from _pending, not yet started
        self._unwritten: list[Group] = []  # taken from _finished, not yet in the stream
        self._inflight: dict[str, tuple[Group, Prompt]] = {}  # started, group not yet finished
        self._active = 0  # submitted, group not yet written (or handed back)
        self.written = 0
        self.tokens_written = 0
        self.handed_back = 0
        self.failed = 0
        self.dropped_stage = 0  # prompts of a finished stage, never started
        self._writer_stop = threading.Event()
        self._admit_thread = self.supervisor.start("rollout-admit", self._admit_loop)
        self._write_thread = self.supervisor.start("rollout-write", self._write_loop)

    # ---- public API ---------------------------------------------------------------------

    def check(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids; raises InvalidRequest (naming the field) for what the engine
        would refuse. `submit` checks too; a caller with several prompts checks them all first."""
        ids = prompt.prompt_token_ids or self.engine.encode(prompt.prompt or "")
        if not ids:
            raise InvalidRequest("prompt", "is empty after tokenisation")
        self.engine.check(ids, prompt.n, prompt.sampling)
        return ids

    def submit(self, prompt: Prompt, block: bool = False, timeout: float | None = None) -> str:
        """Queue one prompt; returns the id its group will carry. Raises InvalidRequest for input
        the engine refuses, queue.Full when max_pending_prompts are already waiting (block=False),
        Stopping once the server is shutting down."""
        if self._closing.is_set():
            raise Stopping("the rollout server is shutting down")
        ids = self.check(prompt)
        group = Group(prompt_id=prompt.prompt_id, task=prompt.task, stage=prompt.stage,
                      prompt_text=prompt.prompt or "", prompt_token_ids=ids,
                      reference=prompt.reference, responses=[], **({"group_id": prompt.group_id} if prompt.group_id else {}))
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
            if self.supervisor.failed is not None:
                raise RuntimeError(f"rollout loop stopped: {self.supervisor.failed}")
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def stats(self) -> dict[str, int]:
        return {"pending": self._pending.qsize(), "active": self._active, "written": self.written,
                "tokens_written": self.tokens_written, "handed_back": self.handed_back,
                "dropped_stage": self.dropped_stage,
                "failed": self.failed, "version": self.engine.version}

    def health(self) -> dict[str, object]:
        return {**self.supervisor.health(), **self.stats()}

    def stop(self, drain_s: float = 0.0) -> None:
        """Refuse new prompts; hand back those not started; give the groups generating `drain_s`
        to finish and be written; hand back what is still unfinished; stop the loops."""
        self._closing.set()
        self._stop.set()
        self._admit_thread.join(10)
        with self._lock:
            waiting = self._admitting + _drain_queue(self._pending)
            self._admitting = []
        self._hand_back([(g, p) for g, p, _ in waiting])
        end = time.monotonic() + drain_s
        while self._inflight and time.monotonic() < end:
            time.sleep(0.05)
        with self._lock:
            unfinished, self._inflight = list(self._inflight.values()), {}
        self._hand_back(unfinished)
        self._writer_stop.set()
        self._write_thread.join(60)

    # ---- internals ----------------------------------------------------------------------

    def _hand_back(self, items: list[tuple[Group, Prompt]]) -> None:
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        for group, prompt in items:
            pipe.xadd(self.keys.returned, {b"prompt": prompt.model_dump_json(), b"group_id": group.group_id})
        pipe.execute()
        with self._lock:
            self._active -= len(items)
            self.handed_back += len(items)
        log.warning("handed back %d prompts to %s", len(items), self.keys.returned)

    def _wait_gate(self) -> None:
        reason = self.gate.reason(self._held)
        while reason is not None and not self._stop.is_set():
            self.metrics.paused.labels(reason).set(1)
            time.sleep(self.config.poll_s)
            reason = self.gate.reason(self._held)
        for r in ("backlog", "staleness"):
            self.metrics.paused.labels(r).set(0)

    def _admit_loop(self) -> None:
        while not self._stop.is_set():
            if not self._admitting:  # after a restart, the batch taken before the error comes first
                try:
                    first = self._pending.get(timeout=0.1)
                except queue.Empty:
                    continue
                # Whatever else is waiting is admitted in the same pass (one gate check), so the
                # engine's first step already batches them instead of ramping up prompt by prompt.
                with self._lock:
                    self._admitting = [first] + _drain_queue(self._pending, self.config.max_inflight_groups - 1)
            self._wait_gate()
            self._drop_finished_stages()
            while self._admitting and not self._stop.is_set():
                group, prompt, queued_at = self._admitting[0]
                if not self._acquire_slot(timeout=0.1):
                    continue
                self.metrics.queue_wait.observe(time.monotonic() - queued_at)
                with self._lock:
                    self._inflight[group.group_id] = (group, prompt)
                    self._admitting.pop(0)
                try:
                    future = self.engine.submit(group.prompt_token_ids, prompt.n, prompt.sampling)
                except InvalidRequest as exc:  # checked at submit; a refusal here is this prompt's alone
                    with self._lock:
                        self._inflight.pop(group.group_id, None)
                        self._active -= 1
                    self._release(1)
                    self.failed += 1
                    log.error("prompt %s refused by the engine: %s", prompt.prompt_id, exc)
                    continue
                except BaseException:
                    with self._lock:  # not started after all: it goes back to the head of the batch
                        self._inflight.pop(group.group_id, None)
                        self._admitting.insert(0, (group, prompt, queued_at))
                    self._release(1)
                    raise
                future.add_done_callback(lambda f, g=group: self._finish(g, f))
            self.metrics.pending.set(self._pending.qsize())

    def _drop_finished_stages(self) -> None:
        """Prompts queued for a stage the driver has moved past would only be trained as stale."""
        current = self.gate.stage()
        if current is None:
            return
        with self._lock:
            keep = [a for a in self._admitting if not a[1].stage or a[1].stage == current]
            dropped = len(self._admitting) - len(keep)
            self._admitting = keep
            self._active -= dropped
            self.dropped_stage += dropped

    def _acquire_slot(self, timeout: float) -> bool:
        if not self._slots.acquire(timeout=timeout):
            return False
        with self._lock:
            self._held += 1
        return True

    def _release(self, n: int) -> None:
        with self._lock:
            self._held -= n
        for _ in range(n):
            self._slots.release()

    def _finish(self, group: Group, future: object) -> None:
        with self._lock:
            mine = self._inflight.pop(group.group_id, None)
        if mine is None:  # handed back while it ran (shutdown past the drain deadline)
            self._release(1)
            return
        try:
            responses: list[Response] = future.result()  # type: ignore[attr-defined]
        except BaseException as exc:
            self._release(1)
            if self.engine.error is not None:  # the engine is gone: the process must be replaced
                self._hand_back([mine])
                self.supervisor.give_up(f"engine: {type(exc).__name__}: {exc}")
                return
            log.error("group %s failed in the engine (%s: %s); handed back", group.group_id,
                      type(exc).__name__, exc)
            self.failed += 1
            self._hand_back([mine])
            return
        group.responses = responses
        group.finished_at = time.time()
        self._finished.put(group)

    def _write_loop(self) -> None:
        while not (self._writer_stop.is_set() and self._finished.empty() and not self._unwritten):
            if not self._unwritten:  # after a restart, the batch taken before the error comes first
                try:
                    first = self._finished.get(timeout=0.1)
                except queue.Empty:
                    continue
                self._unwritten = [first] + _drain_queue(self._finished)
            batch = self._unwritten
            # While draining, what is finished goes in even above the backlog bound (by at most the
            # groups that were in flight): the alternative is losing it.
            self.producer.produce_raw([encode_group(g) for g in batch], stop=self._writer_stop.is_set,
                                      ids=[g.group_id for g in batch])
            self._unwritten = []
            self._release(len(batch))
            self.metrics.groups.inc(len(batch))
            with self._lock:
                self._active -= len(batch)
                self.written += len(batch)
                self.tokens_written += sum(len(r.token_ids) for g in batch for r in g.responses)


class Stopping(RuntimeError):
    """The server is shutting down and takes no more prompts."""


def _drain_queue(q: queue.Queue, limit: int | None = None) -> list:
    out: list = []
    while limit is None or len(out) < limit:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out
