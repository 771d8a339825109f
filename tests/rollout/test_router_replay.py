"""Routing replay end to end on a tiny Qwen3-MoE: a real in-process vLLM engine records each token's
routed experts, the groups go through the codec, and the learner's log-probs of the sampled tokens
are compared with the engine's, without and with replay."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from learner.packing import microbatches
from learner.trainer import Learner
from protocol.codec import decode_group, encode_group
from protocol.config.learner import LearnerConfig
from protocol.schema import Group, MathReference, Response, TaskKind
from rollout_service.engine import Engine, Sampling
from rollout_service.kernels import refresh_cpu_kernels
from rollout_service.routing import RoutingRecorder
from tests.rollout.conftest import ModelDir, engine_config


def _groups(model: Path, dtype: str, prompts: int = 8, n: int = 4, reload: bool = False) -> list[Group]:
    """`reload`: the recorder is installed first, then the weights are reloaded in place as the
    engine does on a weight update."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), dtype=dtype, enforce_eager=True, max_model_len=256, seed=0,
              distributed_executor_backend="uni", enable_prefix_caching=False)
    worker = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
    recorder = RoutingRecorder(worker)
    if reload:
        worker.reload_weights(weights_iterator=iter(load_file(model / "model.safetensors").items()),
                              is_checkpoint_format=True)
        refresh_cpu_kernels(worker.model_runner.get_model())
    rng = np.random.default_rng(0)
    vocab = llm.get_tokenizer().vocab_size
    groups = []
    for g in range(prompts):
        prompt = rng.integers(2, vocab, int(rng.integers(4, 12))).tolist()
        outs = llm.generate([{"prompt_token_ids": prompt}] * n,
                            [SamplingParams(max_tokens=32, temperature=1.0, seed=100 + n * g + i, logprobs=0)
                             for i in range(n)], use_tqdm=False)
        responses = []
        for i, out in enumerate(outs):
            c = out.outputs[0]
            responses.append(Response(
                token_ids=c.token_ids, logprobs=[d[t].logprob for d, t in zip(c.logprobs, c.token_ids)],
                policy_version=0, reward=float(i % 2),
                routed_experts=recorder.take(out.request_id, len(prompt) + len(c.token_ids) - 1)))
        group = Group(prompt_id=str(g), task=TaskKind.math, prompt_token_ids=prompt,
                      reference=MathReference(answer="1"), responses=responses)
        groups.append(decode_group(encode_group(group)))
    del llm
    gc.collect()
    return groups


def _gap(model: Path, groups: list[Group], mode: str) -> tuple[torch.Tensor, float]:
    """|learner - engine| log-prob of every sampled token, and the learner's routing-differ share."""
    learner = Learner(LearnerConfig(router_replay=mode, token_budget=10**6), str(model))  # type: ignore[arg-type]
    learner.add_groups(groups)
    step = learner.batcher.next_step(0, partial=True)
    assert step is not None
    gaps = []
    with torch.no_grad():
        for mb in microbatches(step, 4096, learner.layout):
            x = learner.objective_inputs(mb, 1)
            logp = torch.log_softmax(x.logits.float(), -1).gather(-1, x.targets[:, None])[:, 0]
            gaps.append((logp - x.behaviour_logprobs).abs())
    assert learner.router_replay is not None
    counts = learner.router_replay.take_counts()
    return torch.cat(gaps), counts.differ / counts.tokens


def test_recorded_routing_is_the_engines_own(model_dir: ModelDir) -> None:
    """float32 engine and learner agree on every token's experts, which only holds if each row of
    the recording sits at its request's position; the capture survives a weight reload."""
    model = model_dir("qwen3_moe")
    gap, differ = _gap(model, _groups(model, "float32", reload=True), "off")
    print(f"tokens {len(gap)}; float32 engine: |gap| max {gap.max():.3g} mean {gap.mean():.3g}")
    assert differ == 0.0
    assert float(gap.max()) < 1e-4


def test_replay_closes_the_gap_to_a_bf16_engine(model_dir: ModelDir) -> None:
    """The usual set-up: a bfloat16 engine, a float32 learner. Routing flips at near-ties add to the
    log-prob gap; replaying the engine's routing removes that part."""
    model = model_dir("qwen3_moe")
    groups = _groups(model, "bfloat16")
    off, differ_off = _gap(model, groups, "off")
    r3, differ_r3 = _gap(model, groups, "r3")
    print(f"tokens {len(off)}; without replay: routing differs on {differ_off:.2%} of token-layers, "
          f"|gap| max {off.max():.3g} mean {off.mean():.3g}; with replay: max {r3.max():.3g} "
          f"mean {r3.mean():.3g} (learner's own routing would differ on {differ_r3:.2%})")
    assert differ_off > 0  # the comparison is meaningful: bf16 routing does flip here
    assert r3.max() < off.max() and r3.mean() < off.mean()


def test_engine_returns_routing_across_an_aborting_update(model_dir: ModelDir) -> None:
    """rollout.record_routing: every response carries its routing, resampled ones too (their first
    request's rows are dropped at the abort), and it is the new weights' routing."""
    old, new = model_dir("qwen3_moe", 0), model_dir("qwen3_moe", 1)
    named = sorted(load_file(str(new / "model.safetensors")).items())
    with Engine(str(old), engine_config(record_routing=True, inflight_policy="abort")) as e:
        prompt = e.encode("What is 3 + 4 - 2?")
        running = [e.submit(prompt, 2, Sampling(max_tokens=48)) for _ in range(3)]
        e.update_weights(lambda: iter(named), version=1)
        responses = [r for f in running for r in f.result()] + e.generate(prompt, 2)
        assert e._routing is not None and not e._routing._rows  # nothing left behind
    assert e.metrics.resubmitted._value.get() == 6
    for r in responses:
        assert r.policy_version == 1
        assert r.routed_experts is not None
        assert r.routed_experts.shape == (len(prompt) + len(r.token_ids) - 1, 4, 2)
    for i, r in enumerate(responses):
        r.reward = float(i % 2)
    group = Group(prompt_id="p", task=TaskKind.math, prompt_token_ids=prompt,
                  reference=MathReference(answer="1"), responses=responses)
    gap, differ = _gap(new, [decode_group(encode_group(group))], "off")
    assert differ == 0.0 and float(gap.max()) < 1e-4
