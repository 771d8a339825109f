"""One RL stage: rollout engine, reward workers and learner as Ray actors, paced by the driver.

Asynchronous mode: a feeder thread keeps the engine supplied with prompts (bounded by the
rollout's in-flight and backlog limits) while the learner trains; after each step the new
weights go to the engine (`learner.weight_transport`: broadcast over the group the two share, or
pulled from the learner's HTTP server) and the engine loads them while the learner already trains
the next step.
Synchronous mode: generate a round, score it, train, in turn — nothing overlaps.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from actors.reward_actor import RewardActor
from actors.rollout_actor import RolloutActor
from actors.trainer_actor import TrainerActor
from protocol.config import RunConfig
from protocol.config.train import StageConfig, TrainConfig
from protocol.queue import Backpressure, connect
from protocol.streams import LEARNER_GROUP, RunKeys
from protocol.transport import WeightVersion
from recipe.prompts import PassRates, prompt_stream
from recipe.tasks import TaskItem
from recipe.verdicts import correct
from reward_service.scorer import Scorer


@dataclass
class StageResult:
    model_path: str
    version: int
    steps: int
    accounting: dict[str, int] = field(default_factory=dict)


def stage_run_config(cfg: TrainConfig, stage: StageConfig, model_path: str, redis_url: str,
                     port: int, out_dir: Path) -> RunConfig:
    """The service sections of the run, specialised to this stage (its own checkpoints: a stage
    never resumes from the one before)."""
    base = cfg.services()
    learner = base.learner.model_copy(update=dict(
        model_path=model_path, token_budget=stage.token_budget, lr=stage.lr,
        warmup_steps=stage.warmup_steps, broadcast_port=port, broadcast_world_size=2,
        checkpoint_dir=str(out_dir / "checkpoints")))
    rollout = base.rollout.model_copy(update=dict(
        model=model_path, n=stage.n, max_tokens=stage.max_new_tokens,
        max_inflight_groups=stage.prompts_per_round, max_pending_prompts=stage.prompts_per_round))
    return base.model_copy(update=dict(learner=learner, rollout=rollout,
                                       redis=base.redis.model_copy(update={"url": redis_url})))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StageRunner:
    def __init__(self, cfg: TrainConfig, stage: StageConfig, items: list[TaskItem], replay: list[TaskItem],
                 model_path: str, version: int, redis_url: str, out_dir: Path) -> None:
        self.cfg, self.stage = cfg, stage
        port = free_port()
        self.rc = stage_run_config(cfg, stage, model_path, redis_url, port, out_dir)
        cj = self.rc.model_dump_json()
        self.keys = RunKeys(cfg.run.name)
        self.client = connect(redis_url)
        self.backlog = Backpressure(self.client, [self.keys.rollouts, self.keys.scored], 1,
                                    custody=(self.keys.scored, LEARNER_GROUP))
        self.rates = PassRates(stage.feed_window, stage.feed_floor) if stage.feed == "pass_rate" else None
        self.prompts = prompt_stream(items, stage, cfg.run.seed + version, replay, self.rates)
        self._counted = {"groups_in": 0, "groups_filtered": 0}
        # One intra-op thread for the learner: it shares the machine with the engine's pinned
        # thread pool, and oversubscribed OpenMP pools spin against each other (10x slower).
        threads = {"env_vars": {"OMP_NUM_THREADS": str(cfg.learner_threads)}}
        self.trainer = TrainerActor.options(num_cpus=1, runtime_env=threads).remote(
            cj, version, str(out_dir / "weights"))
        self.rollout = RolloutActor.options(num_cpus=1).remote(cj, model_path, version)
        self.rewards = [RewardActor.options(num_cpus=0).remote(cj, i) for i in range(cfg.reward_workers)]
        self._reward_runs = [r.run.remote() for r in self.rewards]
        lc = self.rc.learner
        self.broadcast = lc.weight_transport == "broadcast"
        if self.broadcast:
            ray.get([self.trainer.join_broadcast.remote(lc.broadcast_world_size),
                     self.rollout.join_weight_group.remote(lc.broadcast_host, lc.broadcast_port, 1,
                                                           lc.broadcast_world_size)])
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        self._update: Any = None

    # ---- feeding ----------------------------------------------------------------------------
    def _next_round(self) -> list[dict[str, Any]]:
        if self.rates is not None:
            for prompt_id, mean_reward in ray.get(self.trainer.outcomes.remote()):
                self.rates.record(prompt_id, mean_reward)
        return list(itertools.islice(self.prompts, self.stage.prompts_per_round))

    def _feed_forever(self) -> None:
        # submit() blocks while the engine's queue is full; poll so that stop() is honoured at
        # once and no thread touches Ray after the driver shuts it down.
        pending = None
        while not self._stop.is_set():
            if pending is None:
                pending = self.rollout.submit.remote(self._next_round())
            done, _ = ray.wait([pending], timeout=0.5)
            if done:
                ray.get(pending)
                pending = None

    def _stop_feeder(self) -> None:
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(10)

    def _drain(self, timeout_s: float = 600.0) -> None:
        """Wait until every generated group has reached the learner's batcher."""
        deadline = time.monotonic() + timeout_s
        # The learner keeps ingesting while the engine finishes, or the backlog gate could hold
        # the last prompts back forever.
        while not ray.get(self.rollout.wait_idle.remote(0.2)):
            ray.get(self.trainer.ingest.remote(50))
            if time.monotonic() > deadline:
                raise TimeoutError("stage drain: the engine did not finish its prompts in time")
        while time.monotonic() < deadline:
            ray.get(self.trainer.ingest.remote(50))
            if self.backlog.backlog() == 0:  # what the learner holds unacked is in its batcher
                ray.get(self.trainer.ingest.remote(50))  # entries read but not yet in the batcher
                return
        raise TimeoutError("stage drain: groups still in the streams after the deadline")

    # ---- steps ------------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        t = time.monotonic()  # sync mode: the step's wall time includes its generation rounds
        if self.cfg.asynchronous:
            if self._feeder is None:
                self._feeder = threading.Thread(target=self._feed_forever, daemon=True, name="feeder")
                self._feeder.start()
        else:
            while not ray.get(self.trainer.ready.remote()):
                ray.get(self.rollout.submit.remote(self._next_round()))
                self._drain()
        t_train = time.monotonic()
        metrics = ray.get(self.trainer.step.remote())
        if metrics is None:
            counts = ray.get(self.trainer.counters.remote())
            raise TimeoutError(
                f"stage {self.stage.name}: no full token budget of groups with mixed rewards arrived "
                f"({counts['groups_filtered']} of {counts['groups_in']} groups had equal rewards): "
                "the start checkpoint solves none (or all) of these prompts; train SFT longer or "
                "raise the stage's n")
        train_s = time.monotonic() - t_train
        if self._update is not None:  # the previous version must be loaded before the next is sent
            ray.get(self._update)
        publish = self.trainer.publish.remote()
        if self.broadcast:  # a collective: the engine must be receiving while the learner sends
            self._update = self.rollout.update_weights.remote(WeightVersion(version=metrics["version"]))
            _, publish_s = ray.get(publish)
        else:  # the engine pulls what the learner has stored
            record, publish_s = ray.get(publish)
            self._update = self.rollout.update_weights.remote(record)
        if not self.cfg.asynchronous:
            ray.get(self._update)
            self._update = None
        counts = ray.get(self.trainer.counters.remote())
        new_in, new_filtered = (counts[k] - self._counted[k] for k in ("groups_in", "groups_filtered"))
        self._counted = {k: counts[k] for k in self._counted}
        return {**metrics, "step_wall_s": time.monotonic() - t, "train_call_s": train_s,
                "publish_s": publish_s, "filtered_share": new_filtered / new_in if new_in else 0.0}

    def greedy_accuracy(self, items: list[TaskItem], scorer: Scorer) -> tuple[int, float]:
        """(engine version, greedy accuracy on `items`) once the newest published version is loaded."""
        if self._update is not None:
            ray.get(self._update)
            self._update = None
        version, texts = ray.get(self.rollout.greedy.remote([it.prompt for it in items], self.stage.max_new_tokens))
        ok = correct(scorer, items, texts)
        return version, sum(ok) / len(ok)

    def rollout_stats(self) -> dict[str, int]:
        return ray.get(self.rollout.stats.remote())

    def emergency_checkpoint(self) -> None:
        """On Ctrl-C or a failure: keep a resumable checkpoint of the learner, if it still answers."""
        self._stop_feeder()
        try:
            print(f"saved learner checkpoint {ray.get(self.trainer.checkpoint.remote(), timeout=120)}")
        except Exception as exc:  # the learner itself may be what failed
            print(f"no checkpoint saved: {type(exc).__name__}: {exc}")

    def finish(self, save_to: Path) -> StageResult:
        """Stop feeding, let everything in flight land, account for every group, save weights."""
        self._stop_feeder()
        if self._update is not None:
            ray.get(self._update)
        self._drain()
        counters = ray.get(self.trainer.counters.remote())
        rollout = self.rollout_stats()
        path = ray.get(self.trainer.save.remote(str(save_to)))
        version = ray.get(self.trainer.version.remote())
        for r in self.rewards:
            r.stop.remote()
        verdicts: Counter[str] = Counter()
        for stats in ray.get(self._reward_runs):
            verdicts.update({k: v for k, v in stats.items() if k.startswith("status.")})
        ray.get(self.rollout.stop.remote())
        ray.get(self.trainer.close.remote())
        for actor in (self.trainer, self.rollout, *self.rewards):
            ray.kill(actor)
        self.client.delete(self.keys.rollouts, self.keys.scored)
        # Verdict counts (correct, wrong, timeout, ...) show a reward path that silently scores 0.
        accounting = {"generated_groups": rollout["written"], "generated_tokens": rollout["tokens_written"],
                      **counters, **{f"verdicts_{k.removeprefix('status.')}": v for k, v in sorted(verdicts.items())}}
        return StageResult(path, version, counters["steps"], accounting)
