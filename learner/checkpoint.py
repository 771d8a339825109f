"""Checkpoints: a Hugging Face folder (safetensors + tokenizer) plus `trainer_state.pt` holding
optimizer, scheduler, RNG states, the policy version and the batcher (buffered/carried pieces,
counters, and the ids of every group already ingested).

The AdamW state is in `optimizer/` (torch.distributed.checkpoint), one file per learner rank: a
learner of K > 1 ranks (learner/distributed.py) keeps it sharded, and its safetensors hold the full
weights gathered from the shards (rank 0 writes them); every rank takes part in a save and in a
load. DCP stores each tensor's global shape and each shard's offsets, so a checkpoint written by K
ranks resumes at any K (1 included): a rank reads the region of each state its shard now covers.

Exactly-once with the stream: the loop acks scored entries only after a checkpoint that contains
them (trained, or buffered in the batcher state) is on disk. A crash before that leaves them
pending, so they are redelivered; a crash between the checkpoint and the ack redelivers entries
the checkpoint already holds, and the batcher drops them by group id (`groups_duplicate`).

A checkpoint is written to a temporary folder and renamed into place, so a kill mid-write leaves
the previous one as the newest.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from learner.distributed import (
    full_model_state,
    load_sharded_optimizer,
    save_sharded_optimizer,
)
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig

STATE_FILE = "trainer_state.pt"
PREFIX = "step-"
OPTIMIZER_DIR = "optimizer"
"""The AdamW state, one file per rank."""


def save_hf(learner: Learner, out: Path) -> None:
    """Weights + tokenizer as a Hugging Face folder; with several ranks every rank must call it (the
    weights are gathered) and rank 0 writes."""
    if learner.world_size == 1:
        learner.model.save_pretrained(out, safe_serialization=True)
    else:
        state = full_model_state(learner.model)
        # tied weights once, as the one-rank save writes them: gathered, they no longer share storage
        model = learner.model
        aliases = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
                   - {n for n, _ in model.named_parameters()})
        state = {k: v for k, v in state.items() if k not in aliases}
        if learner.rank == 0:
            learner.model.save_pretrained(out, state_dict=state, safe_serialization=True)
    if learner.rank == 0:
        learner.tokenizer.save_pretrained(out)


def save_checkpoint(learner: Learner, root: str | Path, keep: int | None = None) -> Path:
    root = Path(root)
    final = root / f"{PREFIX}{learner.version:08d}"
    tmp = root / f".tmp-{final.name}"
    if learner.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if learner.world_size > 1:
        dist.barrier()  # the folder exists before any rank writes into it
    save_sharded_optimizer(learner.model, learner.optimizer, tmp / OPTIMIZER_DIR)
    save_hf(learner, tmp)
    if learner.rank != 0:
        return final
    state: dict[str, Any] = {
        "version": learner.version,
        "scheduler": learner.scheduler.state_dict(),
        "batcher": learner.batcher.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "config": learner.cfg.model_dump(mode="json"),
    }
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep is not None:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(cfg: LearnerConfig, path: str | Path) -> Learner:
    """A learner in exactly the state `save_checkpoint` saw (config: the caller's, not the saved one).

    With several ranks every rank calls it on the same folder, which any number of ranks wrote."""
    path = Path(path)
    learner = Learner(cfg, str(path))
    state = torch.load(path / STATE_FILE, weights_only=False)
    learner.version = state["version"]
    if "optimizer" in state:  # one rank, before the AdamW state moved to optimizer/
        if learner.world_size > 1:
            raise ValueError(f"{path}: its optimizer state predates sharded checkpoints; resume it with "
                             "learner.ranks: 1")
        learner.optimizer.load_state_dict(state["optimizer"])
    else:
        load_sharded_optimizer(learner.model, learner.optimizer, path / OPTIMIZER_DIR)
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.batcher.load_state_dict(state["batcher"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return learner
