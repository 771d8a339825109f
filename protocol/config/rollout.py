from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.config.base import Section


class RolloutConfig(Section):
    model: str = Field(
        default="", description="Hugging Face model folder the engine starts from (version 0).")
    served_model_name: str = Field(
        default="ringrl-policy",
        description="Name /v1/completions answers to (the model folder path is accepted too).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Engine dtype; 'auto' takes the checkpoint's.")
    max_model_len: int | None = Field(
        default=None, gt=0,
        description="Context length (prompt + response) the engine is built for; empty: the model's own "
                    "(a value above it is refused at start).")
    max_num_seqs: int = Field(
        default=256, gt=0, description="Most sequences the engine batches at once.")
    enforce_eager: bool = Field(
        default=True, description="Skip graph capture / torch.compile: ~2 s start on CPU instead of ~30 s.")
    cpu_threads_bind: str = Field(
        default="",
        description="CPU engines: cores the engine's threads are pinned to, e.g. '0' (sets "
                    "VLLM_CPU_OMP_THREADS_BIND); empty: vLLM's choice. Pin it when a learner shares the "
                    "machine: two thread pools on the same cores slow both down ~10x.")
    kv_cache_gib: int = Field(
        default=1, gt=0, description="CPU KV-cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE if unset).")
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="Share of GPU memory vLLM may take (GPU machines only).")
    seed: int | None = Field(
        default=None, description="Base sampling seed (sample i of a prompt uses seed + i); empty: random.")
    n: int = Field(default=8, gt=0, description="Responses sampled per prompt (the group size).")
    max_tokens: int = Field(default=256, gt=0, description="Most new tokens per response.")
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus-sampling mass.")
    stop: list[str] = Field(
        default_factory=list, description="Stop strings; the response ends at the first one.")
    inflight_policy: Literal["finish", "abort", "continue"] = Field(
        default="finish",
        description="On a weight update, in-flight responses finish on the old weights first "
                    "(finish), are aborted and resampled on the new ones (abort), or keep the tokens "
                    "they have and go on under the new weights, each token recording the version that "
                    "sampled it (continue; streamed responses finish on their weights first).")
    record_routing: bool = Field(
        default=False,
        description="Return each response's routed experts (MoE) with it, for the learner's routing "
                    "replay (learner.router_replay: r3): ~MoE layers x top-k bytes per token. Turns the "
                    "engine's prefix caching off (a cached prompt is never forwarded, so it has no routing).")
    max_inflight_groups: int = Field(
        default=64, gt=0, description="Groups generating at once; further prompts wait their turn.")
    max_pending_prompts: int = Field(
        default=4096, gt=0, description="Prompts accepted but not yet started; POST /v1/rollouts answers 429 above.")
    poll_s: float = Field(
        default=0.05, gt=0, description="How often a paused loop re-checks backlog and staleness.")
    follow_weights: bool = Field(
        default=False,
        description="Subscribe to the run's weights channel and pull each new version by URL.")
    drain_s: float = Field(
        default=60.0, ge=0,
        description="On SIGTERM/SIGINT: seconds the groups already generating get to finish and reach "
                    "the stream; prompts not started, and groups still unfinished after it, are handed "
                    "back (the run's `returned` stream) for the driver to resubmit.")
    max_n: int = Field(default=64, gt=0, description="Most responses one prompt may ask for (`n`).")
    weight_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a weight update may come from (POST /v1/weights `url` and `broadcast.host`, "
                    "and the versions followed from Redis), compared as written; empty: the learner's "
                    "(learner.public_url's host, learner.http_host, learner.broadcast_host).")
    weight_connect_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Seconds a weight pull may take to connect, and a broadcast join to rendezvous, "
                    "before the update is refused.")
    max_request_bytes: int = Field(
        default=8 << 20, gt=0, description="Larger request bodies are refused with 413 before they are read.")
    host: str = Field(default="127.0.0.1", description="Bind address of the rollout HTTP server.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port of the rollout HTTP server.")
