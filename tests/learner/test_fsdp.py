"""FSDP2 learner ranks (real gloo process groups in spawned processes): two sharded ranks make the
one-rank update, hold half the state each, checkpoint and resume exactly (at two ranks, and across
a change of rank count both ways), publish the full weights; a dead peer fails a step within the
collective timeout."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.distributed import full_tensor, init_ranks, local_numel
from learner.publish import named_weights
from learner.trainer import Learner
from protocol.config.learner import LearnerConfig
from protocol.netaddr import free_port
from tests.learner.helpers import scored_groups

# adam_eps well above the float noise of a reduced gradient (~1e-9): AdamW's first steps map a
# gradient g to ~lr * g / (|g| + eps), so a tiny eps would turn summation-order noise into +-lr.
CFG = LearnerConfig(token_budget=200, max_tokens_per_microbatch=60, lr=1e-2, adam_eps=1e-4,
                    entropy_coef=0.01, load_balance_coef=0.01, router_z_coef=0.001, grad_clip=0.5, ranks=2,
                    collective_timeout_s=20)
STEPS = 3


def _groups() -> list:
    return scored_groups(24, seed=7, max_len=30)


def _params(learner: Learner) -> dict[str, np.ndarray]:
    """The whole parameters (gathered on every rank: each must call it)."""
    return {n: full_tensor(p.detach()).numpy().copy() for n, p in learner.model.named_parameters()}


def _published(learner: Learner) -> dict[str, np.ndarray]:
    # numpy travels through a Queue by value; torch tensors as shared memory that dies with the rank
    return {n: t.numpy() for n, t in named_weights(learner.model).items()}


def _one_rank(model: str, ckpt: str) -> dict[str, Any]:
    learner = Learner(CFG, model)
    learner.add_groups(_groups())
    metrics, params = [], []
    out: dict[str, Any] = {}
    for s in range(STEPS):
        metrics += learner.train_ready(max_steps=1)
        params.append(_params(learner))
        if s == 0:
            out["ckpt"] = str(save_checkpoint(learner, ckpt))
    return {**out, "metrics": metrics, "params": params, "published": _published(learner)}


def _resume(ckpt: str) -> dict[str, Any]:
    """The steps after the checkpoint (taken after step 1), resumed from it at this process's rank count."""
    resumed = load_checkpoint(CFG, ckpt)
    return {"metrics": [resumed.train_ready(max_steps=1)[0] for _ in range(STEPS - 1)], "params": _params(resumed)}


def _rank(rank: int, port: int, model: str, ckpt: str, one_ckpt: str, q: Any) -> None:
    torch.set_num_threads(1)
    init_ranks(CFG, rank, 2, f"127.0.0.1:{port}")
    try:
        learner = Learner(CFG, model)
        learner.add_groups(_groups())
        out: dict[str, Any] = {"metrics": [], "params": [], "rank": rank,
                               "param_numel": (sum(local_numel(p) for p in learner.model.parameters()),
                                               sum(p.numel() for p in learner.model.parameters()))}
        for s in range(STEPS):
            out["metrics"] += learner.train_ready(max_steps=1)
            out["params"].append(_params(learner))
            if s == 0:
                out["ckpt"] = str(save_checkpoint(learner, ckpt))
        states = [st for st in learner.optimizer.state.values()]
        out["adam_numel"] = (sum(local_numel(st["exp_avg"]) + local_numel(st["exp_avg_sq"]) for st in states),
                             2 * out["param_numel"][1])
        out["published"] = _published(learner)
        # resume from the checkpoint after step 1: the next steps must be the uninterrupted ones,
        # from this run's two-rank checkpoint and from the one-rank run's
        out["resumed"] = _resume(out["ckpt"])
        out["from_one"] = _resume(one_ckpt)
        if rank != 0:
            out = {k: out[k] for k in ("rank", "param_numel", "adam_numel", "metrics")}
        q.put(out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(moe_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run of one rank and one of two FSDP ranks, on the same groups; each
    checkpoints after step 1, and each resumes from both checkpoints."""
    ctx = mp.get_context("spawn")
    port, q = free_port(), ctx.Queue()
    ckpt, one_ckpt = tmp_path_factory.mktemp("fsdp-ckpt"), tmp_path_factory.mktemp("one-rank-ckpt")
    one = _one_rank(str(moe_path), str(one_ckpt))
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned ranks before torch loads
    procs = [ctx.Process(target=_rank, args=(r, port, str(moe_path), str(ckpt), one["ckpt"], q)) for r in (0, 1)]
    for p in procs:
        p.start()
    two = {}
    for _ in procs:
        out = q.get(timeout=600)
        two[out["rank"]] = out
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    one["from_two"] = _resume(two[0]["ckpt"])
    return {"one": one, "two": two}


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(torch.from_numpy(np.asarray(a[n])), torch.from_numpy(np.asarray(b[n])),
                                   atol=1e-5, rtol=1e-4, msg=n)


def _same_metrics(a: dict[str, float], b: dict[str, float]) -> None:
    assert a["tokens"] == b["tokens"] == CFG.token_budget
    for k in ("loss", "pg_loss", "lb_loss", "z_loss", "grad_norm", "entropy"):
        assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (k, a[k], b[k])


@pytest.mark.slow  # three model processes: ~40 s on a busy 2-core machine
def test_two_sharded_ranks_make_the_one_rank_updates(runs: dict[str, Any]) -> None:
    one, two = runs["one"], runs["two"]
    assert len(one["metrics"]) == STEPS
    for s in range(STEPS):
        for r in (0, 1):
            _same_metrics(two[r]["metrics"][s], one["metrics"][s])
        _close(two[0]["params"][s], one["params"][s])
    # the weights moved: equal because both updated the same way, not because neither did
    moved = max(float(np.abs(one["params"][-1][n] - two[0]["params"][0][n]).max()) for n in one["params"][-1])
    assert moved > 1e-3
    assert one["metrics"][0]["grad_norm"] > CFG.grad_clip  # clipping was exercised


@pytest.mark.slow
def test_parameters_and_adam_state_are_sharded(runs: dict[str, Any]) -> None:
    two = runs["two"]
    for r in (0, 1):
        for local, total in (two[r]["param_numel"], two[r]["adam_numel"]):
            # dim-0 shards: ~half each (small tensors round up per rank)
            assert 0.4 * total <= local <= 0.6 * total, (r, local, total)
    assert two[0]["param_numel"][0] + two[1]["param_numel"][0] >= two[0]["param_numel"][1]


@pytest.mark.slow
def test_resume_at_two_ranks_continues_exactly(runs: dict[str, Any]) -> None:
    two = runs["two"][0]
    for s, m in enumerate(two["resumed"]["metrics"]):
        _same_metrics(m, two["metrics"][s + 1])
        assert m["step"] == s + 2
    _close(two["resumed"]["params"], two["params"][-1])


@pytest.mark.slow
@pytest.mark.parametrize("written,resumed", [("one", "two"), ("two", "one")])
def test_resume_with_another_rank_count_continues_exactly(runs: dict[str, Any], written: str, resumed: str) -> None:
    """A checkpoint of one rank resumed by two sharded ranks, and one of two ranks by one: the
    AdamW state is re-cut to the new shards, and the steps after it are the uninterrupted ones."""
    uninterrupted = runs["one"]
    got = runs["two"][0]["from_one"] if written == "one" else runs["one"]["from_two"]
    for s, m in enumerate(got["metrics"]):
        _same_metrics(m, uninterrupted["metrics"][s + 1])
        assert m["step"] == s + 2
    _close(got["params"], uninterrupted["params"][-1])


@pytest.mark.slow
def test_checkpoint_is_a_plain_hf_model(runs: dict[str, Any]) -> None:
    two = runs["two"][0]
    model = AutoModelForCausalLM.from_pretrained(two["ckpt"], dtype=torch.float32)
    state = {n: p.detach().numpy() for n, p in model.named_parameters()}
    _close(state, two["params"][0])
    assert (Path(two["ckpt"]) / "optimizer" / ".metadata").is_file()


@pytest.mark.slow
def test_published_weights_are_the_full_one_rank_weights(runs: dict[str, Any]) -> None:
    published = runs["two"][0]["published"]
    _close(published, runs["one"]["published"])
    assert all(published[n].shape == runs["one"]["params"][-1][n].shape for n in published)


def _failing_peer(rank: int, port: int, model: str, how: str, q: Any) -> None:
    torch.set_num_threads(1)
    cfg = CFG.model_copy(update={"collective_timeout_s": 5.0})
    init_ranks(cfg, rank, 2, f"127.0.0.1:{port}")
    learner = Learner(cfg, model)
    learner.add_groups(_groups())
    dist.barrier()
    if rank == 1:  # between steps, without a word to its peer: it dies, or it stops answering
        if how == "dies":
            os._exit(0)
        time.sleep(60)
        os._exit(0)
    t0 = time.monotonic()
    try:
        learner.train_ready(max_steps=1)
        q.put(("no error", time.monotonic() - t0))
    except Exception as e:  # noqa: BLE001 -- the error's text is what the test checks
        q.put((f"{type(e).__name__}: {e}", time.monotonic() - t0))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dies", "stalls"])
def test_failed_peer_fails_the_step_within_the_timeout(moe_path: Path, how: str) -> None:
    ctx = mp.get_context("spawn")
    port, q = free_port(), ctx.Queue()
    os.environ["OMP_NUM_THREADS"] = "1"
    procs = [ctx.Process(target=_failing_peer, args=(r, port, str(moe_path), how, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        error, elapsed = q.get(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.join(30)
    assert error != "no error"
    # a dead peer's socket closes at once; a silent one is given the collective timeout (5 s)
    assert elapsed < (2.0 if how == "dies" else 5.0 + 5.0), (error, elapsed)
    if how == "stalls":
        assert elapsed >= 4.0, (error, elapsed)
