"""Checkpoints: a Hugging Face folder (safetensors + tokenizer) plus `trainer_state.pt` holding
optimizer, scheduler, RNG states, the policy version and the batcher (buffered/carried pieces,
counters, and the ids of every group already ingested).

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

from learner.trainer import Learner
from protocol.config.learner import LearnerConfig

STATE_FILE = "trainer_state.pt"
PREFIX = "step-"


def save_checkpoint(learner: Learner, root: str | Path, keep: int | None = None) -> Path:
    root = Path(root)
    final = root / f"{PREFIX}{learner.version:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    learner.model.save_pretrained(tmp, safe_serialization=True)
    learner.tokenizer.save_pretrained(tmp)
    state: dict[str, Any] = {
        "version": learner.version,
        "optimizer": learner.optimizer.state_dict(),
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
    """A learner in exactly the state `save_checkpoint` saw (config: the caller's, not the saved one)."""
    path = Path(path)
    learner = Learner(cfg, str(path))
    state = torch.load(path / STATE_FILE, weights_only=False)
    learner.version = state["version"]
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.batcher.load_state_dict(state["batcher"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return learner
