"""Reward worker: raw groups from the rollouts stream -> scored groups on the scored stream."""

from __future__ import annotations

import threading
import time
from collections import Counter

from protocol.codec import encode_group
from protocol.config.redis import RedisConfig
from protocol.queue import Backpressure, StreamConsumer, connect
from protocol.streams import LEARNER_GROUP, REWARD_GROUP, RunKeys
from reward_service.scorer import Item, Scorer, reward_of


class RewardWorker:
    """One consumer of the reward group. `run()` blocks until `stop()`; thread-safe stats()."""

    def __init__(self, scorer: Scorer, redis: RedisConfig, run: str, name: str) -> None:
        if not redis.url:
            raise ValueError("redis.url is required for a reward worker")
        self.scorer, self.name = scorer, name
        self.keys = RunKeys(run)
        self.client = connect(redis.url)
        self.consumer = StreamConsumer(self.client, self.keys.rollouts, REWARD_GROUP, name,
                                       claim_idle_ms=redis.claim_idle_ms)
        # What the learner has read and holds until its next checkpoint is not waiting for anyone:
        # counting it would stop scoring until that checkpoint, which needs more scored groups.
        self.backpressure = Backpressure(self.client, [self.keys.scored], redis.max_backlog,
                                         custody=(self.keys.scored, LEARNER_GROUP))
        self._stop = threading.Event()
        self._stats: Counter[str] = Counter()

    def step(self) -> int:
        """Read, score and forward one batch; returns the groups forwarded."""
        entries = self.consumer.read(count=self.scorer.cfg.read_batch, block_ms=500)
        if not entries:
            return 0
        groups = [e.group for e in entries]
        items = [Item(g.task, r.text, g.reference) for g in groups for r in g.responses]
        verdicts = iter(self.scorer.score(items))
        now = time.time()
        for g in groups:
            for r in g.responses:
                r.verdict = next(verdicts)
                r.reward = reward_of(r.verdict)
                self._stats[f"status.{r.verdict.status.value}"] += 1
            g.scored_at = now
        self.backpressure.wait(needed=len(groups), stop=self._stop.is_set)
        sent = self.consumer.forward([e.id for e in entries], self.keys.scored,
                                     [encode_group(g) for g in groups])
        self.scorer.metrics.groups.inc(sent)
        self._stats["groups"] += sent
        self._stats["lost_to_reclaim"] += len(groups) - sent
        return sent

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["dead_lettered"] = self.consumer.dead_lettered
        out["reclaimed"] = self.consumer.reclaimed
        return out


def uid_offset(index: int, slots: int) -> int:
    """Disjoint sandbox uid ranges: 0 is the HTTP server's, i + 1 is stream worker i's."""
    return (index + 1) * slots


def main(config_json: str, index: int) -> None:
    """Entry of one stream-worker process (services mode); ends cleanly on SIGTERM/SIGINT."""
    import signal

    from protocol.config import RunConfig
    from protocol.metrics import serve_observability

    cfg = RunConfig.model_validate_json(config_json)
    scorer = Scorer(cfg.reward, uid_offset=uid_offset(index, cfg.reward.code_concurrency))
    worker = RewardWorker(scorer, cfg.redis, cfg.run.name, f"reward-{index}")
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    if cfg.reward.metrics_port:
        serve_observability(scorer.registry, scorer.health, cfg.reward.host,
                            cfg.reward.metrics_port + index)
    try:
        worker.run()
    finally:
        scorer.close()
