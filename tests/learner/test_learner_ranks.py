"""A TrainerActor with learner.ranks: 2 under a local Ray: rank 0 hosts the session and drives a
second rank actor (gloo); it trains from a real Redis stream the steps a one-rank session trains,
publishes and saves the same weights, and fails a step with the rank's error once that rank dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import redis
import torch
from safetensors.torch import load_file

from actors.trainer_actor import TrainerActor
from learner.session import LearnerSession
from protocol.config import RunConfig
from protocol.queue import StreamProducer
from protocol.streams import RunKeys
from tests.learner.helpers import scored_groups

STEPS = 3


def _config(redis_url: str, model: Path, out: Path, name: str, ranks: int) -> RunConfig:
    return RunConfig.model_validate({
        "run": {"name": name, "output_dir": str(out)},
        "redis": {"url": redis_url, "claim_idle_ms": 600_000},
        "learner": {"model_path": str(model), "token_budget": 100, "max_tokens_per_microbatch": 60,
                    "checkpoint_every": 2, "http_port": 0, "lr": 1e-3, "adam_eps": 1e-4,
                    "publish_dtype": "float32", "max_staleness": 1000, "ranks": ranks,
                    "collective_timeout_s": 30, "rank_num_cpus": 1}})


def _weights_file(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_file(str(path)).items()}


def _weights(folder: str) -> dict[str, np.ndarray]:
    return _weights_file(Path(folder) / "model.safetensors")


def _one_rank(cfg: RunConfig, out: Path) -> dict[str, Any]:
    session = LearnerSession(cfg, "trainer", 0, out / "weights-one", http_port=0)
    rows = [session.step(120) for _ in range(STEPS)]
    saved = session.save(out / "saved-one")
    published = _weights_file(session.server.store.path(session.publish().version))
    counters = session.counters()
    session.close()
    return {"rows": rows, "counters": counters, "saved": _weights(saved), "published": published}


@pytest.mark.slow  # a local Ray, two ranks and a reference session: ~60 s on a busy 2-core machine
def test_trainer_actor_with_two_ranks(redis_url: str, redis_client: redis.Redis, moe_path: Path,
                                      tmp_path: Path) -> None:
    groups = scored_groups(16, seed=11, max_len=30)
    for name in ("two", "one"):
        StreamProducer(redis_client, RunKeys(name).scored).produce(groups)
    two_cfg = _config(redis_url, moe_path, tmp_path, "two", ranks=2)
    one = _one_rank(_config(redis_url, moe_path, tmp_path, "one", ranks=1), tmp_path)

    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        trainer = TrainerActor.options(num_cpus=1).remote(two_cfg.model_dump_json(), 0, str(tmp_path / "weights"))
        rows = [ray.get(trainer.step.remote(120)) for _ in range(STEPS)]
        record, _ = ray.get(trainer.publish.remote())
        version = ray.get(trainer.version.remote())
        counters = ray.get(trainer.counters.remote())
        saved = _weights(ray.get(trainer.save.remote(str(tmp_path / "saved-two"))))
        ckpt = Path(ray.get(trainer.checkpoint.remote()))
        published = _weights_file(tmp_path / "weights" / f"v{record.version:08d}.safetensors")
        # a rank that dies fails the next step on rank 0 with that rank's error, not a hang
        os.kill(ray.get(trainer.rank_pids.remote())[0], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ray.exceptions.RayTaskError, match="learner rank 1 failed in train_step"):
            ray.get(trainer.step.remote(120), timeout=120)
        failed_after = time.monotonic() - t0
        ray.get(trainer.close.remote())
    finally:
        ray.shutdown()

    assert version == STEPS and record.version == STEPS
    assert counters == one["counters"] and counters["tokens_trained"] == STEPS * 100
    for got, want in zip(rows, one["rows"]):
        assert got is not None and want is not None
        assert got["version"] == want["version"] and got["tokens"] == want["tokens"] == 100
        for k in ("loss", "grad_norm", "entropy"):
            assert abs(got[k] - want[k]) <= 1e-5 * max(1.0, abs(want[k])), (k, got[k], want[k])
    assert saved.keys() == one["saved"].keys()
    for n, w in one["saved"].items():
        torch.testing.assert_close(torch.from_numpy(saved[n]), torch.from_numpy(w), atol=1e-5, rtol=1e-4, msg=n)
    # published under the model's parameter names (what the engines load), gathered whole
    assert published.keys() == one["published"].keys()
    for n, w in one["published"].items():
        torch.testing.assert_close(torch.from_numpy(published[n]), torch.from_numpy(w), atol=1e-5, rtol=1e-4, msg=n)
    assert (ckpt / "optimizer" / ".metadata").is_file() and ckpt.name == f"step-{STEPS:08d}"
    assert failed_after < 30 + 10  # within learner.collective_timeout_s
