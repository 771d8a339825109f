"""Two learner ranks (gloo) make the same update as one rank on the same step."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import torch
import torch.distributed as dist

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
    return metrics, {n: p.detach().clone() for n, p in learner.model.named_parameters()}


def _rank(rank: int, port: int, model: str, q: mp.Queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metrics, params = _train(model)
        q.put((rank, metrics, params if rank == 0 else None))
    finally:
        dist.destroy_process_group()


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
    for n, p in one_params.items():
        torch.testing.assert_close(two_params[n], p, atol=1e-6, rtol=1e-5, msg=n)
    assert one_metrics["grad_norm"] > 0
