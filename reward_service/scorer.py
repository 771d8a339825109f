"""One entry point for scoring: routes each item to the math pool or the code sandbox."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from protocol.config.reward import RewardConfig
from protocol.schema import (
    CodeReference,
    MathReference,
    Reference,
    TaskKind,
    Verdict,
    VerdictStatus,
)
from reward_service import extract
from reward_service.code_verifier import check_program
from reward_service.math_pool import MathPool
from reward_service.metrics import RewardMetrics
from reward_service.sandbox import Sandbox

log = logging.getLogger("ringrl.reward")

@dataclass(frozen=True)
class Item:
    task: TaskKind
    response: str
    reference: Reference


def reward_of(verdict: Verdict) -> float:
    return 1.0 if verdict.status is VerdictStatus.correct else 0.0


class Scorer:
    """Thread-safe; owns the math worker processes and the sandbox slots. Call close()."""

    def __init__(self, cfg: RewardConfig, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = RewardMetrics(self.registry)
        self.sandbox = Sandbox(cfg.sandbox, cfg.code_concurrency)
        self.math = MathPool(cfg.math_workers, cfg.math_timeout_s)
        self._pattern = re.compile(cfg.answer_pattern) if cfg.answer_pattern else None
        self._math_exec = ThreadPoolExecutor(cfg.math_workers, thread_name_prefix="score-math")
        self._code_exec = ThreadPoolExecutor(cfg.code_concurrency, thread_name_prefix="score-code")
        self._kills_seen = [0, 0]
        self._lock = threading.Lock()

    def _one(self, item: Item) -> Verdict:
        start = time.perf_counter()
        try:
            verdict = self._verify(item)
        except Exception as exc:  # one item the verifier cannot handle must not fail its batch
            log.exception("verifier error on a %s item", item.task.value)
            verdict = Verdict(status=VerdictStatus.wrong, detail=f"verifier error: {type(exc).__name__}")
        # A detail quotes the response, which on the stream path may hold a lone surrogate: it
        # would fail the encoding of the whole scored batch (HTTP refuses such responses).
        verdict.detail = verdict.detail.encode("utf-8", "replace").decode()
        self.metrics.latency.labels(item.task.value).observe(time.perf_counter() - start)
        self.metrics.verifications.labels(item.task.value, verdict.status.value).inc()
        return verdict

    def _verify(self, item: Item) -> Verdict:
        if len(item.response) > self.cfg.max_response_chars:  # HTTP refuses these; streams get here
            return Verdict(status=VerdictStatus.limit_exceeded,
                           detail=f"response over reward.max_response_chars={self.cfg.max_response_chars}")
        ref = item.reference
        if item.task is TaskKind.math:
            if not isinstance(ref, MathReference):
                return Verdict(status=VerdictStatus.wrong, detail="math task without a math reference")
            answer = extract.math_answer(item.response, self._pattern)
            if answer is None:
                return Verdict(status=VerdictStatus.no_answer, detail="no final answer found")
            return self.math.check(answer, ref.answer)
        if not isinstance(ref, CodeReference):
            return Verdict(status=VerdictStatus.wrong, detail="code task without a code reference")
        program = extract.program(item.response, self.cfg.code_whole_text)
        if program is None:
            return Verdict(status=VerdictStatus.no_answer, detail="no ```python block found")
        return check_program(self.sandbox, program, ref)

    def submit(self, items: list[Item]) -> list[Future[Verdict]]:
        """Start scoring; each future ends with a verdict, never an exception. Call sync_kills()
        when they are done."""
        return [(self._math_exec if it.task is TaskKind.math else self._code_exec).submit(self._one, it)
                for it in items]

    def score(self, items: list[Item]) -> list[Verdict]:
        verdicts = [f.result() for f in self.submit(items)]
        self.sync_kills()
        return verdicts

    def sync_kills(self) -> None:
        """Bring the kill counters up to date with the sandbox's and the math pool's."""
        with self._lock:
            sandbox, math = self.sandbox.kills, self.math.kills
            self.metrics.sandbox_kills.inc(sandbox - self._kills_seen[0])
            self.metrics.math_kills.inc(math - self._kills_seen[1])
            self._kills_seen = [sandbox, math]

    def health(self) -> dict[str, object]:
        alive = self.math.alive()
        return {"ok": alive == self.cfg.math_workers, "math_workers_alive": alive,
                "sandbox": self.cfg.sandbox.backend}

    def close(self) -> None:
        self._math_exec.shutdown(wait=True)
        self._code_exec.shutdown(wait=True)
        self.math.close()
        self.sandbox.close()
