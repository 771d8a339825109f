"""Learner ranks 1..K-1 as Ray actors, driven by rank 0 (the TrainerActor that hosts the session).

With `learner.ranks = K > 1` rank 0 picks a free port on its node, starts K-1 `LearnerRank`
actors and joins them in one process group (gloo or NCCL, every collective under
`collective_timeout_s`). Each rank holds a bare Learner: its shards of the model and AdamW state
(learner/distributed.py). Rank 0 keeps everything that is not a collective (Redis, batcher, audit,
weight server, acks); for the collective parts — a step, a publish, a checkpoint, a save — it fires
the same call on every other rank (the Step travels by value) and runs its own part meanwhile
(`LearnerRanks.mirror`). A failed or dead rank fails that call on rank 0 with the rank's error.

The ranks resume from the same checkpoint folder as rank 0 and write their optimizer shards into
it, so the checkpoint directory must be on storage every rank's node sees.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.util
import torch.distributed as dist

from learner.batcher import Step
from learner.checkpoint import save_checkpoint, save_hf
from learner.distributed import init_ranks
from learner.publish import join_publish
from learner.session import checkpoint_root, start_learner
from protocol.config import RunConfig
from protocol.netaddr import free_port

PEER_GRACE_S = 5.0
"""How long a failed call on rank 0 waits for the other ranks' own errors (the likelier cause)."""


@ray.remote
class LearnerRank:
    def __init__(self, config_json: str, rank: int, world_size: int, address: str, start_version: int) -> None:
        self.cfg = RunConfig.model_validate_json(config_json)
        init_ranks(self.cfg.learner, rank, world_size, address)
        self.learner = start_learner(self.cfg, start_version)

    def ready(self) -> int:
        return self.learner.version

    def train_step(self, step: Step) -> None:
        self.learner.train_step(step)

    def set_stage(self, token_budget: int, lr: float) -> None:
        self.learner.set_stage(token_budget, lr)

    def publish(self) -> None:
        join_publish(self.learner.model, self.cfg.learner.publish_dtype)

    def checkpoint(self) -> None:
        save_checkpoint(self.learner, checkpoint_root(self.cfg), keep=self.cfg.learner.keep_checkpoints)

    def save(self, out_dir: str) -> None:
        save_hf(self.learner, Path(out_dir))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        dist.destroy_process_group()


class LearnerRanks:
    """Rank 0's side: starts the other ranks, joins their process group, and mirrors calls to them
    (`learner.distributed.Peers`). With one rank it starts nothing and mirrors nothing."""

    def __init__(self, cfg: RunConfig, start_version: int) -> None:
        lc = cfg.learner
        self.timeout_s = lc.collective_timeout_s
        self.actors: list[Any] = []
        if lc.ranks == 1:
            return
        host = ray.util.get_node_ip_address()
        address = f"{host}:{free_port(host)}"
        # each rank runs one OpenMP pool of the driver's size: two pools on one core spin 10x slower
        env = {"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}}
        config_json = cfg.model_dump_json()
        self.actors = [LearnerRank.options(num_cpus=lc.rank_num_cpus, num_gpus=lc.rank_num_gpus,
                                           runtime_env=env).remote(config_json, r, lc.ranks, address, start_version)
                       for r in range(1, lc.ranks)]
        init_ranks(lc, 0, lc.ranks, address)

    def wait_ready(self) -> None:
        """Every rank built its learner (raises the first one's error)."""
        self._collect([a.ready.remote() for a in self.actors], "start", self.timeout_s, all_due=True)

    @contextlib.contextmanager
    def mirror(self, method: str, *args: Any) -> Iterator[None]:
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        try:
            yield
        except Exception:
            # rank 0's collective failed: a rank's own failure (dead, raised) says why
            self._collect(refs, method, PEER_GRACE_S, all_due=False)
            raise
        self._collect(refs, method, self.timeout_s, all_due=True)

    def _collect(self, refs: list[Any], method: str, timeout_s: float, all_due: bool) -> None:
        """Raise the first rank's error among the calls done within `timeout_s`; with `all_due`, a
        call not done by then is an error too."""
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for rank, ref in enumerate(refs, start=1):
            if ref not in done:
                if not all_due:
                    continue
                raise TimeoutError(f"learner rank {rank}: {method} did not finish within {timeout_s:.0f} s "
                                   "(learner.collective_timeout_s) of rank 0")
            try:
                ray.get(ref)
            except Exception as e:
                raise RuntimeError(f"learner rank {rank} failed in {method}: {e}") from e

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        if not self.actors:
            return
        with contextlib.suppress(Exception):  # a dead rank has nothing left to close
            ray.get([a.close.remote() for a in self.actors], timeout=self.timeout_s)
        for a in self.actors:
            ray.kill(a)
        dist.destroy_process_group()
