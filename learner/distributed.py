"""Data-parallel learner ranks with sharded parameters, gradients and AdamW state (FSDP2).

Design
------
- Sharding: every decoder layer is one `fully_shard` unit and the root (embeddings, final norm,
  lm_head, tied or not) another, over a 1-D device mesh of all ranks. AdamW is built over the
  sharded (DTensor) parameters, so each rank holds ~1/K of parameters, gradients and moments;
  AdamW is elementwise, so the sharded update is the unsharded one.
- Why SUM: every token's loss weight already carries the step's global normaliser (1/token_budget
  for C3PO), so the sum of the ranks' gradients *is* the one-rank gradient. FSDP's default would
  average (divide by K); `set_gradient_divide_factor(1)` with sum-only comms makes the
  reduce-scatter a plain SUM on gloo and NCCL alike.
- Uneven micro-batch counts: the step's micro-batches are dealt round-robin, so ranks may get
  different counts (or none). FSDP's forward and backward are collectives (all-gather,
  reduce-scatter), so every rank runs the same number of forward/backward passes: the ranks agree
  on the largest count (one all-reduce MAX) and a rank that is short runs zero-weight passes on a
  two-token input. Those add exact zeros to the gradient and nothing to the step's sums. Experts no
  token routed to on a rank get zero gradients in the reduce-scatter
  (`set_reduce_scatter_unused_params`), so the collectives match across ranks whatever the routing.
- Gradients accumulate unsharded over a rank's micro-batches and are reduce-scattered once, on
  its last backward. Clipping takes the global norm over the DTensor gradient shards.
- Every collective runs under the process group's timeout (`collective_timeout_s`): a dead or
  stuck peer raises instead of hanging the step.
- Loading: rank 0 alone reads the weights; the other ranks build the model on the meta device,
  and every rank receives only its shards from rank 0 (`load_sharded`).
- Checkpoints (learner/checkpoint.py): the Hugging Face safetensors folder holds the full weights,
  gathered from the shards and written by rank 0; `optimizer/` holds the sharded AdamW state, one
  file per rank plus metadata (torch.distributed.checkpoint); `trainer_state.pt` (rank 0) holds the
  scheduler, version, RNG and batcher. Every rank reads the same folder to resume, so the folder
  must be on storage all ranks share; the number of ranks may change between save and resume.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from protocol.config.learner import LearnerConfig


def resolve_device(cfg: LearnerConfig) -> torch.device:
    """The device this rank's model lives on (under Ray each rank sees just its own GPU)."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_ranks(cfg: LearnerConfig, rank: int, world_size: int, address: str) -> None:
    """Join the learner's process group at `address` (host:port, rank 0's TCP store)."""
    device = resolve_device(cfg)
    backend = cfg.dist_backend if cfg.dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=cfg.collective_timeout_s))


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (the classes Hugging Face never splits across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers (_no_split_modules) to shard")
    return layers


def shard_model(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2 over all ranks: one unit per decoder layer plus the root; gradients reduced by SUM."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
            m.set_reduce_scatter_unused_params(True, recurse=False)


def load_sharded(full: torch.nn.Module | None, meta: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`meta` (the model's structure on the meta device, on every rank) sharded, each rank's shards
    filled from `full`, the model rank 0 alone has read (None on the others): no other rank ever
    holds the whole model. Collective."""
    shard_model(meta, device)
    meta.to_empty(device=device)
    set_model_state_dict(meta, full.state_dict() if full is not None else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # buffers outside the state dict (rotary frequencies) are computed at init, which meta skipped
    computed = dict(full.named_buffers()) if full is not None else {}
    for name, buf in meta.named_buffers():
        if full is not None:
            buf.copy_(computed[name])
        dist.broadcast(buf, src=0)
    return meta


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank must call it in the same order)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_numel(t: torch.Tensor) -> int:
    """Elements this rank holds of a (possibly sharded) tensor."""
    return (t.to_local() if isinstance(t, DTensor) else t).numel()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip to the global gradient norm over all ranks' shards; returns that norm (before clipping)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = full_tensor(torch.nn.utils.get_total_norm(grads))
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """Reduce-scatter the next backward's gradients (the rank's last micro-batch), or only accumulate."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def zero_pass(model: torch.nn.Module, device: torch.device) -> None:
    """A forward/backward that adds exactly zero to every gradient: a short rank's share of the
    collectives of a micro-batch it does not have."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    out = model(input_ids=ids, use_cache=False)
    (out.logits.sum() * 0.0).backward()


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict on rank 0 (CPU); empty on the other ranks. Collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns at every call made without a process group; for a one-rank learner that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def save_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Each rank writes its AdamW shards under `path` (rank 0 adds the metadata); one rank without a
    process group writes it whole. Collective; when it returns on rank 0 every rank's files are
    written."""
    with _single_process_quiet():
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path,
                 no_dist=not dist.is_initialized())


def load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Read this rank's AdamW shards from `path` into the optimizer, whatever number of ranks wrote
    them. Collective."""
    # the template's (zero-initialised) DTensors say which shard each rank reads; load fills them
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


class Peers(Protocol):
    """The other learner ranks, as rank 0 drives them: `mirror(method, *args)` has every other rank
    run its part of `method` while rank 0 runs its own inside the block; the block's exit waits for
    them and raises if one failed."""

    def mirror(self, method: str, *args: Any) -> contextlib.AbstractContextManager[None]: ...


class NoPeers:
    """A learner of one rank (or one whose ranks are driven otherwise)."""

    def mirror(self, method: str, *args: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()
