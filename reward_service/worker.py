"""Reward worker: raw groups from the rollouts stream -> scored groups on the scored stream."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from protocol.codec import encode_group
from protocol.config.redis import RedisConfig
from protocol.queue import Backpressure, StreamConsumer, queue_client
from protocol.streams import LEARNER_GROUP, REWARD_GROUP, RunKeys
from reward_service.scorer import Item, Scorer, reward_of

log = logging.getLogger("ringrl.reward")


class RewardWorker:
    """One consumer of the reward group. `run()` blocks until `stop()`; thread-safe stats()."""

    def __init__(self, scorer: Scorer, redis: RedisConfig, run: str, name: str) -> None:
        if not redis.url:
            raise ValueError("redis.url is required for a reward worker")
        self.scorer, self.name = scorer, name
        self.keys = RunKeys(run)
        self.client = queue_client(redis)
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
            if self.step():
                log.info("%s: scored and forwarded a batch; %s", self.name, dict(self._stats))

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["dead_lettered"] = self.consumer.dead_lettered
        out["reclaimed"] = self.consumer.reclaimed
        return out


def main(config_json: str, index: int) -> None:
    """Entry of one stream-worker process (services mode). SIGTERM/SIGINT end it after the batch
    in hand; an error restarts the loop (Supervisor); a loop that keeps failing exits 1, and the
    reward service restarts the process."""
    import sys

    from protocol.auth import load_tokens
    from protocol.config import RunConfig
    from protocol.metrics import serve_observability
    from protocol.serving import setup_logging, stop_on_signals
    from protocol.supervise import Supervisor

    setup_logging()
    cfg = RunConfig.model_validate_json(config_json)
    scorer = Scorer(cfg.reward)
    worker = RewardWorker(scorer, cfg.redis, cfg.run.name, f"reward-{index}")
    supervisor = Supervisor(stop=worker._stop)
    stop_on_signals(worker._stop)
    if cfg.reward.metrics_port:
        serve_observability(scorer.registry, lambda: {**scorer.health(), **supervisor.health()},
                            cfg.reward.host, cfg.reward.metrics_port + index, load_tokens(cfg.auth))
    supervisor.start(f"reward-worker-{index}", worker.run)
    try:
        while not worker._stop.wait(0.5) and supervisor.failed is None:
            pass
        supervisor.join(60)
    finally:
        scorer.close()
    sys.exit(1 if supervisor.failed else 0)
