"""One RL stage: rollout engines, reward workers and learner as Ray actors, paced by the driver.

Asynchronous mode: one feeder thread per engine keeps it supplied with prompts from the stage's one
prompt stream (each engine's own in-flight and backlog limits pace its feeder, so a faster engine
takes more rounds) while the learner trains; after each step the new weights go to every engine
(`learner.weight_transport`: broadcast over the group the learner and all engines share, or pulled
from the learner's HTTP server) and the engines load them while the learner trains the next step.
Synchronous mode: generate a round (spread over the engines), score it, train, in turn.

Placement (`cluster:`): the learner is placed first and reports the address of its node; the engines
get that address for the weight path, wherever Ray puts them.
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
from actors.trainer_actor import TrainerActor
from protocol.config import RunConfig
from protocol.config.train import StageConfig, TrainConfig
from protocol.queue import Backpressure, queue_client
from protocol.streams import LEARNER_GROUP, RunKeys
from protocol.transport import WeightVersion
from recipe.cluster import Placement
from recipe.engines import RESTART_TIMEOUT_S, EngineLost, Engines
from recipe.prompts import PassRates, prompt_stream
from recipe.tasks import TaskItem
from recipe.verdicts import graded
from reward_service.scorer import Scorer


@dataclass
class StageResult:
    model_path: str
    version: int
    steps: int
    accounting: dict[str, int] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)  # node address of the learner and each engine


def stage_run_config(cfg: TrainConfig, stage: StageConfig, model_path: str, redis_url: str,
                     out_dir: Path) -> RunConfig:
    """The service sections of the run, specialised to this stage (its own checkpoints: a stage
    never resumes from the one before). The learner's addresses are filled in once it is placed."""
    base = cfg.services()
    learner = base.learner.model_copy(update=dict(
        model_path=model_path, token_budget=stage.token_budget, lr=stage.lr,
        warmup_steps=stage.warmup_steps, broadcast_world_size=1 + cfg.cluster.engines,
        checkpoint_dir=str(out_dir / "checkpoints")))
    rollout = base.rollout.model_copy(update=dict(
        model=model_path, n=stage.n, max_tokens=stage.max_new_tokens,
        max_inflight_groups=stage.prompts_per_round, max_pending_prompts=stage.prompts_per_round))
    return base.model_copy(update=dict(learner=learner, rollout=rollout,
                                       # the engines' group ids, for failover and accounting by id
                                       redis=base.redis.model_copy(update={"url": redis_url, "audit": True})))


class StageRunner:
    def __init__(self, cfg: TrainConfig, stage: StageConfig, items: list[TaskItem], replay: list[TaskItem],
                 model_path: str, version: int, place: Placement, out_dir: Path) -> None:
        self.cfg, self.stage = cfg, stage
        self.rc = stage_run_config(cfg, stage, model_path, place.redis_url, out_dir)
        self.keys = RunKeys(cfg.run.name)
        self.client = queue_client(self.rc.redis)
        self.backlog = Backpressure(self.client, [self.keys.rollouts, self.keys.scored], 1,
                                    custody=(self.keys.scored, LEARNER_GROUP))
        self.rates = PassRates(stage.feed_window, stage.feed_floor) if stage.feed == "pass_rate" else None
        self._prompts_lock = threading.Lock()  # the engines' feeders share the one stream
        self._counted = {"groups_in": 0, "groups_filtered": 0}
        cl = cfg.cluster
        # One intra-op thread for the learner: it shares the machine with the engine's pinned
        # thread pool, and oversubscribed OpenMP pools spin against each other (10x slower).
        threads = {"env_vars": {"OMP_NUM_THREADS": str(cfg.learner_threads)}}
        lc = self.rc.learner  # rank 0; the learner starts its other ranks with the same resources
        self.trainer = TrainerActor.options(num_cpus=lc.rank_num_cpus, num_gpus=lc.rank_num_gpus,
                                            runtime_env=threads).remote(self.rc.model_dump_json(), version, str(out_dir / "weights"), place.joined)
        host, url, port = ray.get(self.trainer.endpoint.remote())
        self.rc = self.rc.model_copy(update={"learner": self.rc.learner.model_copy(
            update={"http_host": host, "public_url": url, "broadcast_host": host, "broadcast_port": port})})
        cj = self.rc.model_dump_json()
        self.engines = Engines(self.rc, cl, model_path, version, self.client)
        self.rewards = [RewardActor.options(num_cpus=cl.reward_cpus).remote(cj, i) for i in range(cfg.reward_workers)]
        self._reward_runs = [r.run.remote() for r in self.rewards]
        lc = self.rc.learner
        self.broadcast = lc.weight_transport == "broadcast"
        if self.broadcast:
            self._form_group(port)
        self._stop = threading.Event()
        self._feeders: list[threading.Thread] = []
        self._feed_error: EngineLost | None = None
        self._updates: list[Any] = []
        # A resumed stage: the learner took up its newest checkpoint, past the weights the engines
        # were started with; they load the learner's before generating anything.
        self.steps_done = ray.get(self.trainer.version.remote()) - version
        # A resumed stage draws in an order of its own: seeded like the killed run's, it would
        # first replay exactly the prompts that run had already trained on.
        self.prompts = prompt_stream(items, stage, cfg.run.seed + version + self.steps_done, replay, self.rates)
        counts = ray.get(self.trainer.counters.remote())
        self._counted = {k: counts[k] for k in self._counted}
        # the groups its checkpoint holds were generated by the engines of the killed run
        self.groups_before_resume = counts["groups_in"] + counts["groups_duplicate"]
        if self.steps_done:
            self._send_weights(self.steps_done + version)
            self._wait_updates()

    # ---- feeding ----------------------------------------------------------------------------
    def _next_round(self, size: int | None = None) -> list[dict[str, Any]]:
        with self._prompts_lock:
            if self.rates is not None:
                for prompt_id, mean_reward in ray.get(self.trainer.outcomes.remote()):
                    self.rates.record(prompt_id, mean_reward)
            return list(itertools.islice(self.prompts, size or self.stage.prompts_per_round))

    def _feed_forever(self, i: int) -> None:
        # submit() blocks while the engine's queue is full; poll so that stop() is honoured at
        # once and no thread touches Ray after the driver shuts it down.
        pending = None
        try:
            while not self._stop.is_set():
                if pending is None:
                    pending, since = self.engines.submit(i, self._next_round())
                done, _ = ray.wait([pending], timeout=0.5)
                if done:
                    self.engines.settle(i, pending, since)  # a dead engine is recovered here
                    pending = None
        except EngineLost as exc:
            self._feed_error = exc

    def _check_feeders(self) -> None:
        if self._feed_error is not None:
            raise self._feed_error

    def _stop_feeder(self) -> None:
        self._stop.set()
        for feeder in self._feeders:  # one may be bringing a restarted engine back: let it finish
            feeder.join(RESTART_TIMEOUT_S + 60)

    def _generate_round(self) -> None:
        """Sync mode: one round of prompts, spread evenly over the engines."""
        share = -(-self.stage.prompts_per_round // len(self.engines))
        calls = [self.engines.submit(i, self._next_round(share)) for i in range(len(self.engines))]
        for i, (ref, since) in enumerate(calls):
            self.engines.settle(i, ref, since)

    def _wait_updates(self) -> None:
        """Every engine has loaded the newest version sent (the next may only be sent after)."""
        self.engines.wait(self._updates)
        self._updates = []

    def _drain(self, timeout_s: float = 600.0) -> None:
        """Wait until every generated group has reached the learner's batcher."""
        deadline = time.monotonic() + timeout_s
        # The learner keeps ingesting while the engines finish, or the backlog gate could hold
        # the last prompts back forever.
        while not self.engines.idle():
            self._check_feeders()
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
        self._check_feeders()
        if self.cfg.asynchronous:
            if not self._feeders:
                self._feeders = [threading.Thread(target=self._feed_forever, args=(i,), daemon=True,
                                                  name=f"feeder-{i}") for i in range(len(self.engines))]
                for feeder in self._feeders:
                    feeder.start()
        else:
            while not ray.get(self.trainer.ready.remote()):
                self._generate_round()
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
        publish_s = self._send_weights(metrics["version"])
        if not self.cfg.asynchronous:
            self._wait_updates()
        counts = ray.get(self.trainer.counters.remote())
        new_in, new_filtered = (counts[k] - self._counted[k] for k in ("groups_in", "groups_filtered"))
        self._counted = {k: counts[k] for k in self._counted}
        # A step trained from groups read earlier reads none: it has no share (not a share of 0).
        return {**metrics, "step_wall_s": time.monotonic() - t, "train_call_s": train_s, "publish_s": publish_s,
                **({"filtered_share": new_filtered / new_in} if new_in else {})}

    def _form_group(self, port: int) -> None:
        """The learner hosts the weight group on `port` (rank 0) and engine i joins it as rank i + 1."""
        lc = self.rc.learner
        self.engines.regroup = False  # before: a death noticed while the group forms asks again
        ray.get([self.trainer.join_broadcast.remote(lc.broadcast_world_size, port),
                 *(e.join_weight_group.remote(lc.broadcast_host, port, i + 1, lc.broadcast_world_size)
                   for i, e in enumerate(self.engines.actors))])

    def _send_weights(self, version: int) -> float:
        """Publish the learner's weights (`version`) and start every engine loading them; the
        seconds publishing took."""
        self._wait_updates()  # the previous version must be loaded before the next is sent
        if not self.broadcast:  # the engines pull what the learner has stored
            record, publish_s = ray.get(self.trainer.publish.remote())
            self.engines.published(record)
            self._updates = self.engines.update(record)
            return publish_s
        while True:  # a collective: every engine must be receiving while the learner sends
            since = time.monotonic()
            try:
                if self.engines.regroup:  # an engine was replaced: a new group, on a fresh port
                    port = ray.get(self.trainer.fresh_port.remote())
                    self._form_group(port)
                    print(f"weight group re-formed on port {port} with the restarted engine")
                publish = self.trainer.publish.remote()
                self._updates = self.engines.update(WeightVersion(version=version))
                record, publish_s = ray.get(publish)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                # A member died while the group formed or the learner sent: recover it, re-form
                # the group, send again (the survivors' calls on the broken group are dropped;
                # they receive the version sent again). Restarts are bounded: recover raises
                # EngineLost once they are used up.
                if not self.engines.recover_dead(exc, since):
                    raise
                print(f"weight broadcast of version {version} broke ({type(exc).__name__}): a member died; "
                      "sending it again")
                continue
            self.engines.published(record)
            return publish_s

    def curve_accuracy(self, items: list[TaskItem], scorer: Scorer, samples: int,
                       seed: int) -> tuple[int, float, float | None]:
        """(engine version, greedy accuracy, sampled pass@1 over `samples` responses per item or None
        without samples) on `items` once the newest published version is loaded, spread over the
        engines. The same seed each time: the curve's points differ by the weights, not the draws."""
        self._wait_updates()
        version, greedy, sampled = self.engines.measure([it.prompt for it in items], self.stage.max_new_tokens,
                                                        samples, seed)
        ok, hits = graded(scorer, items, greedy, sampled)
        return version, sum(ok) / len(ok), sum(hits) / (samples * len(hits)) if samples else None

    def rollout_stats(self) -> dict[str, int]:
        return self.engines.stats()

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
        self._wait_updates()
        self._drain()
        counters = ray.get(self.trainer.counters.remote())
        per_engine = self.engines.written()
        rollout = self.rollout_stats()
        placement = {"learner": ray.get(self.trainer.endpoint.remote())[0], "engines": self.engines.nodes()}
        path = ray.get(self.trainer.save.remote(str(save_to)))
        version = ray.get(self.trainer.version.remote())
        for r in self.rewards:
            r.stop.remote()
        verdicts: Counter[str] = Counter()
        for stats in ray.get(self._reward_runs):
            verdicts.update({k: v for k, v in stats.items() if k.startswith("status.")})
        self.engines.stop()
        ray.get(self.trainer.close.remote())
        for actor in (self.trainer, *self.rewards):
            ray.kill(actor)
        self.client.delete(self.keys.rollouts, self.keys.scored, self.keys.audit_written)
        # Verdict counts (correct, wrong, timeout, ...) show a reward path that silently scores 0.
        # Groups by id, across engine restarts (the engines' own counters restart with them).
        accounting = {"generated_groups": sum(per_engine) + self.groups_before_resume,
                      "groups_before_resume": self.groups_before_resume, "generated_tokens": rollout["tokens_written"],
                      **{f"generated_groups_engine{i}": n for i, n in enumerate(per_engine)},
                      "engine_restarts": self.engines.restarts, "groups_reissued": self.engines.reissued,
                      **counters, **{f"verdicts_{k.removeprefix('status.')}": v for k, v in sorted(verdicts.items())}}
        return StageResult(path, version, counters["steps"], accounting, placement)
