"""Two learner ranks (gloo, FSDP2) reduce the same gradient as one rank on the same step."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from learner.distributed import full_tensor
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig
from tests.conftest import free_port
from tests.learner.helpers import scored_groups

CFG = LearnerConfig(token_budget=200, max_tokens_per_microbatch=60, lr=1e-2, entropy_coef=0.01,
                    load_balance_coef=0.01, router_z_coef=0.001, grad_clip=0.5)


def _train(model: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    learner = Learner(CFG, model)
    learner.add_groups(scored_groups(16, seed=7, max_len=30))
    metrics = learner.train_ready(max_steps=1)[0]
    # compare the update's direction (the reduced, clipped gradient): AdamW's first step maps
    # gradients of ~1e-12 to +-lr by sign, which float summation order alone can flip
    # sharded gradients gathered whole (a collective: every rank takes part)
    return metrics, {n: full_tensor(p.grad).clone() for n, p in learner.model.named_parameters()}


def _rank(rank: int, port: int, model: str, q: mp.Queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metrics, params = _train(model)
        # numpy travels by value; torch tensors through a Queue are shared-memory handles that die
        # with this process
        q.put((rank, metrics, {n: g.numpy() for n, g in params.items()} if rank == 0 else None))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # three model processes: ~60 s on a busy 2-core machine
def test_two_ranks_equal_one(moe_path: Path) -> None:
    ctx = mp.get_context("spawn")
    port, q = free_port(), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, str(moe_path), q)) for r in (0, 1)]
    for p in procs:
        p.start()
    one_metrics, one_params = _train(str(moe_path))
    results = {}
    for _ in procs:
        rank, metrics, params = q.get(timeout=300)
        results[rank] = (metrics, params)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    two_metrics, two_params = results[0]
    assert results[1][0]["tokens"] == two_metrics["tokens"] == one_metrics["tokens"] == 200
    for k in ("loss", "pg_loss", "lb_loss", "z_loss", "grad_norm", "entropy"):
        assert abs(two_metrics[k] - one_metrics[k]) <= 1e-5 * max(1.0, abs(one_metrics[k])), k
    scale = max(float(g.abs().max()) for g in one_params.values())
    for n, g in one_params.items():
        torch.testing.assert_close(torch.from_numpy(two_params[n]), g, atol=1e-5 * scale, rtol=1e-4, msg=n)
    assert one_metrics["grad_norm"] > 0
