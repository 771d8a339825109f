"""A stage's rollout engines: N `RolloutActor`s, the prompts issued to each, and their failover.

Every prompt is issued with a group id chosen here, and each engine writes the ids of the groups it
streams into the run's audit set in the same transaction as the group (`redis.audit`). When an
engine dies, Ray restarts it (`cluster.max_engine_restarts`); the restarted engine pulls the newest
published version from the learner's store over HTTP (whatever the transport), and exactly the
prompts it had been issued whose groups are not in the audit set are issued to it again, under the
same ids, with the next prompts it is sent. So a lost group is generated once more and never
trained twice (the learner drops a repeated id), and the accounting counts it: `groups_reissued`.
Whoever notices a death first (a feeder, the step waiting for a weight update, or a broadcast that
failed) recovers the engine; a call made before that recovery that fails later finds it done.

With the `broadcast` transport the group's world is fixed, so a replaced engine cannot just join
it: a recovery marks the group for re-forming (`regroup`), and the stage has the learner host a new
group, on a fresh port, that every engine joins before the next version is sent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import ray
import ray.exceptions

from actors.rollout_actor import RolloutActor
from protocol.config import RunConfig
from protocol.config.cluster import ClusterConfig
from protocol.schema import new_group_id
from protocol.streams import RunKeys
from protocol.transport import WeightVersion

RESTART_TIMEOUT_S = 600.0


class EngineLost(RuntimeError):
    """An engine died and cannot come back (restarts used up, or a broadcast group it was part of)."""


class Engines:
    def __init__(self, rc: RunConfig, cl: ClusterConfig, model_path: str, version: int, client: Any) -> None:
        self.broadcast = rc.learner.weight_transport == "broadcast"
        self.client, self.audit = client, RunKeys(rc.run.name).audit_written
        cj = rc.model_dump_json()
        self.actors = [RolloutActor.options(num_cpus=cl.engine_cpus, num_gpus=cl.engine_gpus,
                                            resources=cl.engine_resources,
                                            max_restarts=cl.max_engine_restarts,
                                            ).remote(cj, model_path, version)
                       for _ in range(cl.engines)]
        self.issued: list[dict[str, dict[str, Any]]] = [{} for _ in self.actors]  # group id -> prompt
        self.latest: WeightVersion | None = None  # the newest published record: a restarted engine pulls it
        self.regroup = False  # broadcast: an engine was replaced, the weight group must be re-formed
        self.restarts = 0
        self.reissued = 0
        self._lock = threading.Lock()  # one recovery at a time, whoever noticed the death
        self._recovered_at = [0.0 for _ in self.actors]  # monotonic time of each engine's last recovery
        self._again: list[list[dict[str, Any]]] = [[] for _ in self.actors]  # lost prompts to issue again
        self._update_t = 0.0

    def __len__(self) -> int:
        return len(self.actors)

    # ---- prompts ------------------------------------------------------------------------------
    def submit(self, i: int, prompts: list[dict[str, Any]]) -> tuple[Any, float]:
        """Issue to engine i the prompts it lost in a restart (same group ids) and `prompts` (new
        ids); the call's ref (it blocks while the engine's queue is full) and when it was made."""
        with self._lock:
            again, self._again[i] = self._again[i], []
        for p in prompts:
            p["group_id"] = new_group_id()
            self.issued[i][p["group_id"]] = p
        since = time.monotonic()  # before the call: a recovery after this is one the call saw
        return self.actors[i].submit.remote(again + prompts), since

    def settle(self, i: int, ref: Any, since: float) -> None:
        """Wait for a call made to engine i at `since`; a dead engine is recovered instead."""
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.recover(i, exc, since)

    def recover(self, i: int, cause: BaseException, since: float) -> None:
        """Engine i died after `since`: wait for Ray's restart, load the newest weights, and keep its
        lost prompts for its next submit. Nothing to do if it was recovered after `since`."""
        with self._lock:
            if self._recovered_at[i] > since:
                return
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            while True:
                try:
                    ray.get(self.actors[i].version.remote(), timeout=30)
                    break
                except ray.exceptions.ActorDiedError as exc:
                    raise EngineLost(f"rollout engine {i} died and its restarts "
                                     "(cluster.max_engine_restarts) are used up") from exc
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                    if time.monotonic() > deadline:
                        raise EngineLost(f"rollout engine {i} did not come back within "
                                         f"{RESTART_TIMEOUT_S:.0f} s") from cause
                    time.sleep(1)
            if self.latest is not None:
                ray.get(self.actors[i].pull_weights.remote(self.latest))
            self.regroup = self.regroup or self.broadcast
            ids, written = self._written(i)
            lost = [self.issued[i][gid] for gid, w in zip(ids, written) if not w]
            self.restarts += 1
            self.reissued += len(lost)
            self._again[i] = lost  # not submitted here: a full queue would block every recovery
            self._recovered_at[i] = time.monotonic()
            print(f"rollout engine {i} died ({type(cause).__name__}): restarted by Ray, at version "
                  f"{self.latest.version if self.latest else 'start'}; {len(lost)} prompts issued again")

    # ---- weights ------------------------------------------------------------------------------
    def update(self, record: WeightVersion) -> list[Any]:
        """Start every engine loading `record`; their refs (broadcast: receiving while the learner sends)."""
        self._update_t = time.monotonic()
        return [e.update_weights.remote(record) for e in self.actors]

    def published(self, record: WeightVersion) -> None:
        """The learner published `record` (it is in its store): what a restarted engine is to pull
        (with broadcast, known only once the send returned)."""
        self.latest = record

    def recover_dead(self, cause: BaseException, since: float) -> bool:
        """After a failed broadcast: recover every engine that died (by asking each); whether the
        group must now be re-formed (False: no member died, the failure is something else)."""
        for i, e in enumerate(self.actors):
            try:
                ray.get(e.version.remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                self.recover(i, exc, since)
        return self.regroup

    def wait(self, refs: list[Any], since: float | None = None) -> None:
        """Wait for one call per engine (made at `since`, default: the last update's time)."""
        for i, ref in enumerate(refs):
            self.settle(i, ref, self._update_t if since is None else since)

    # ---- state --------------------------------------------------------------------------------
    def idle(self) -> bool:
        """No engine holds an unwritten group (one that died is recovered, and holds none)."""
        t = time.monotonic()
        refs = [e.wait_idle.remote(0.2) for e in self.actors]
        idle = True
        for i, ref in enumerate(refs):
            try:
                idle = ray.get(ref) and idle
            except ray.exceptions.RayActorError as exc:
                self.recover(i, exc, t)
                idle = False
        return idle

    def stats(self) -> dict[str, int]:
        """The live engines' counters, summed (a restarted engine counts from its restart)."""
        total: Counter[str] = Counter()
        for i, e in enumerate(self.actors):
            try:
                total.update(ray.get(e.stats.remote(), timeout=60))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # restarting: its feeder recovers it
        return dict(total)

    def written(self) -> list[int]:
        """Groups each engine wrote this stage, by id (across its restarts)."""
        return [sum(self._written(i)[1]) for i in range(len(self.actors))]

    def _written(self, i: int) -> tuple[list[str], list[int]]:
        """The ids issued to engine i, and whether each group is in the audit set (was written)."""
        ids = list(self.issued[i])
        return ids, (self.client.smismember(self.audit, ids) if ids else [])

    def measure(self, prompts: list[str], max_tokens: int, samples: int,
                seed: int) -> tuple[int, list[str], list[list[str]]]:
        """(oldest engine version, one greedy text per prompt, `samples` sampled texts per prompt), the
        prompts spread over the engines."""
        k = len(self.actors)
        answers = ray.get([e.measure.remote(prompts[i::k], max_tokens, samples, seed)
                           for i, e in enumerate(self.actors)])
        greedy: list[str] = [""] * len(prompts)
        sampled: list[list[str]] = [[] for _ in prompts] if samples else []
        for i, (_, g, s) in enumerate(answers):
            greedy[i::k] = g
            if samples:
                sampled[i::k] = s
        return min(v for v, _, _ in answers), greedy, sampled

    def nodes(self) -> list[str]:
        return ray.get([e.node.remote() for e in self.actors])

    def stop(self) -> None:
        ray.get([e.stop.remote() for e in self.actors])
        for e in self.actors:
            ray.kill(e)
