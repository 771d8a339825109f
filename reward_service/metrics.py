"""Prometheus metrics of the reward side."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class RewardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verifications = Counter(
            "ringrl_reward_verifications", "Responses verified, by task and verdict status",
            ["task", "status"], registry=registry)
        self.latency = Histogram(
            "ringrl_reward_latency_seconds", "Time to verify one response", ["task"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry)
        self.sandbox_kills = Counter(
            "ringrl_reward_sandbox_kills", "Programs killed for wall clock or output size",
            registry=registry)
        self.math_kills = Counter(
            "ringrl_reward_math_worker_kills", "Math-Verify workers killed past the deadline",
            registry=registry)
        self.groups = Counter(
            "ringrl_reward_groups", "Groups scored and forwarded by stream workers",
            registry=registry)
