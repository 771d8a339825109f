"""Child process for the resume test: train uninterrupted, train-and-get-killed, or resume.

Every mode replays the same stream of groups from the start, as Redis redelivers unacked
entries; the resumed learner must skip what its checkpoint already holds.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from learner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig
from tests.learner.helpers import scored_groups

CFG = LearnerConfig(token_budget=120, max_tokens_per_microbatch=100, lr=3e-3, warmup_steps=3,
                    max_staleness=1000, entropy_coef=0.01, load_balance_coef=0.01, router_z_coef=0.001)
SAVE_AT = 3


def main(mode: str, model: str, ckpt_root: str, out: str) -> None:
    torch.set_num_threads(1)
    learner = load_checkpoint(CFG, latest_checkpoint(ckpt_root)) if mode == "resume" else Learner(CFG, model)
    losses: dict[int, float] = {}
    for chunk in range(12):
        learner.add_groups(scored_groups(4, seed=chunk, max_len=30, prefix=f"c{chunk}-"))
        while (step := learner.batcher.next_step(learner.version)) is not None:
            metrics = learner.train_step(step)
            losses[learner.version] = metrics["loss"]
            if mode == "crash" and learner.version == SAVE_AT:
                save_checkpoint(learner, ckpt_root)
            if mode == "crash" and learner.version == SAVE_AT + 1:
                print("killable", flush=True)
                time.sleep(600)
    with open(out, "w") as f:
        json.dump(losses, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
