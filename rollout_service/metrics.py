"""Prometheus metrics of one rollout process (engine, streaming loop, server share one registry)."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tokens = Counter("ringrl_rollout_tokens", "Response tokens generated.", registry=r)
        self.tokens_per_s = Gauge("ringrl_rollout_tokens_per_second",
                                  "Generated tokens per second over the last window.", registry=r)
        self.responses = Counter("ringrl_rollout_responses", "Responses finished.", ["finish"], registry=r)
        self.groups = Counter("ringrl_rollout_groups", "Groups written to the rollouts stream.", registry=r)
        self.queue_wait = Histogram("ringrl_rollout_queue_wait_seconds",
                                    "From a prompt's submission to its first request entering the engine.",
                                    registry=r)
        self.in_flight = Gauge("ringrl_rollout_requests_in_flight",
                               "Engine requests (one per response) running now.", registry=r)
        self.pending = Gauge("ringrl_rollout_pending_prompts", "Prompts accepted, not yet started.",
                             registry=r)
        self.version = Gauge("ringrl_rollout_policy_version", "Weight version the engine runs.", registry=r)
        self.update_seconds = Histogram("ringrl_rollout_weight_update_seconds",
                                        "Wall time of a weight update (drain/abort + load).", registry=r)
        self.last_update_seconds = Gauge("ringrl_rollout_last_weight_update_seconds",
                                         "Wall time of the latest weight update.", registry=r)
        self.resubmitted = Counter("ringrl_rollout_resubmitted",
                                   "Responses aborted by a weight update and sampled again.", registry=r)
        self.paused = Gauge("ringrl_rollout_paused", "1 while new prompts are held back, by reason.",
                            ["reason"], registry=r)
        self.logprob_gap = Gauge("ringrl_rollout_logprob_gap",
                                 "Max |engine - learner| log-prob on a probe (set by the caller).",
                                 registry=r)
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._window_tokens = 0

    def add_tokens(self, n: int) -> None:
        self.tokens.inc(n)
        with self._lock:
            self._window_tokens += n
            elapsed = time.monotonic() - self._window_start
            if elapsed >= 1.0:
                self.tokens_per_s.set(self._window_tokens / elapsed)
                self._window_start, self._window_tokens = time.monotonic(), 0
