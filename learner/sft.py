"""Distillation (SFT) of a causal LM on teacher completions, saving several checkpoints.

Examples are (prompt, completion) text pairs; the loss covers completion tokens (and the EOS that
ends them) only. Checkpoints are Hugging Face folders (safetensors + tokenizer) so the rollout
engines, the learner and `ringrl select-checkpoint` all load them the same way.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from learner.trainer import warmup_schedule
from protocol.config.sft import KERNEL_ENV, SFTConfig

STATE_FILE = "sft_state.json"


@dataclass(frozen=True)
class SFTCheckpoint:
    path: Path
    step: int
    minutes: float
    loss: float


@dataclass(frozen=True)
class _Example:
    ids: list[int]
    n_prompt: int


def _encode(tok: PreTrainedTokenizerBase, examples: Sequence[tuple[str, str]], max_length: int) -> list[_Example]:
    # Prompt and completion are tokenised apart, exactly as a rollout engine sees the prompt.
    prompts = tok([p for p, _ in examples], add_special_tokens=False)["input_ids"]
    completions = tok([c for _, c in examples], add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompts, completions):
        ids = (p + c + [tok.eos_token_id])[:max_length]
        if len(ids) > len(p):
            out.append(_Example(ids, len(p)))
    return out


def bucketed_batches(lengths: Sequence[int], batch_size: int, window_batches: int,
                     rng: random.Random) -> Iterator[list[int]]:
    """One epoch of index batches: shuffled, sorted by length within windows, batch order shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    yield from batches


def _collate(batch: list[_Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    loss_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        mask[row, :len(e.ids)] = 1
        loss_mask[row, e.n_prompt:len(e.ids)] = True
    return ids, mask, loss_mask


def completion_loss(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor,
                    loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:]
    keep = loss_mask[:, 1:]
    return torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep])


def kernel_settings() -> dict[str, str | int]:
    """What decides a CPU checkpoint's bits besides data and seed (README, reproducibility)."""
    import transformers

    cap = torch.backends.cpu.get_cpu_capability()  # fixes ATen's choice if no op has run yet
    return {"ATEN_CPU_CAPABILITY": cap.lower(), "MKL_CBWR": os.environ.get("MKL_CBWR", ""),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def save_checkpoint(model: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path, step: int,
                    minutes: float, loss: float) -> SFTCheckpoint:
    path = out / f"step-{step:06d}"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    state = {"step": step, "minutes": minutes, "loss": loss, "kernels": kernel_settings()}
    (path / STATE_FILE).write_text(json.dumps(state))
    return SFTCheckpoint(path, step, minutes, loss)


def train_sft(cfg: SFTConfig, examples: Sequence[tuple[str, str]],
              on_checkpoint: Callable[[SFTCheckpoint], None] | None = None,
              console: Console | None = None) -> list[SFTCheckpoint]:
    """Train on (prompt, completion) pairs until max_steps/max_minutes; returns the checkpoints saved.

    `on_checkpoint` runs after each save (e.g. an evaluation); its time, like saving's, is not
    counted as training time.
    """
    if not cfg.init_model:
        raise ValueError("sft.init_model: no model folder given")
    if not (Path(cfg.init_model) / "config.json").is_file():
        raise ValueError(f"sft.init_model: {cfg.init_model} is not a model folder (no config.json)")
    if cfg.max_steps == 0 and cfg.max_minutes == 0:
        raise ValueError("sft: set max_steps or max_minutes, or training never ends")
    console = console or Console()
    # A fixed thread count: it changes how reductions and matrix products are split, hence the bits.
    # (torch.use_deterministic_algorithms is not set: on CPU it gave the same bits as without.)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kernels = kernel_settings()
    if cfg.threads and kernels["threads"] != cfg.threads:
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op in a process that hosted an
        # in-process engine: say so rather than train with a thread count nobody chose.
        console.print(f"sft: sft.threads {cfg.threads} not applied, torch runs {kernels['threads']} threads "
                      "(something in this process fixed the count): checkpoints can differ", soft_wrap=True)
    loose = {k: kernels[k] or "unset" for k, v in KERNEL_ENV.items() if kernels[k] != v}
    if loose:
        console.print(f"sft: CPU kernels not pinned ({loose}; protocol.config.sft.pin_kernels sets {KERNEL_ENV} "
                      "before torch's first op): checkpoints can differ on another CPU model", soft_wrap=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = AutoTokenizer.from_pretrained(cfg.init_model)
    model = AutoModelForCausalLM.from_pretrained(cfg.init_model, dtype=torch.float32,
                                                 experts_implementation=cfg.experts_implementation)
    model.train()
    data = _encode(tok, examples, cfg.max_length)
    if not data:
        raise ValueError("sft: no training examples")
    lengths = [len(e.ids) for e in data]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_schedule(opt, cfg.warmup_steps)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    saved: list[SFTCheckpoint] = []
    trained_s, step, ema, window_tokens, window_s = 0.0, 0, math.nan, 0, 0.0
    next_save_min = cfg.save_every_minutes or math.inf
    save_steps = set(cfg.save_steps)

    def done() -> bool:
        return (cfg.max_steps > 0 and step >= cfg.max_steps) or \
            (cfg.max_minutes > 0 and trained_s >= cfg.max_minutes * 60)

    def save() -> None:
        ckpt = save_checkpoint(model, tok, out, step, trained_s / 60, ema)
        saved.append(ckpt)
        console.print(f"sft checkpoint step {step} at {ckpt.minutes:.2f} min (loss {ema:.3f}) -> {ckpt.path}",
                      soft_wrap=True)
        if on_checkpoint is not None:
            model.eval()
            on_checkpoint(ckpt)
            model.train()

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    total = cfg.max_steps if cfg.max_steps else None
    with Progress(TextColumn("sft"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task("", total=total)
        while not done():
            for batch_idx in bucketed_batches(lengths, cfg.batch_size, cfg.bucket_batches, rng):
                t0 = time.perf_counter()
                ids, mask, loss_mask = _collate([data[i] for i in batch_idx], pad_id)
                with autocast:
                    loss = completion_loss(model, ids, mask, loss_mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                opt.step()
                sched.step()
                dt = time.perf_counter() - t0
                trained_s += dt
                step += 1
                window_tokens += int(mask.sum())
                window_s += dt
                value = float(loss.detach())
                ema = value if math.isnan(ema) else 0.9 * ema + 0.1 * value
                progress.update(bar, advance=1,
                                description=f"step {step} loss {ema:.3f} {trained_s / 60:.2f} min")
                if step % cfg.log_every_steps == 0:
                    console.print(f"sft step {step} | {trained_s / 60:.2f} min | loss {ema:.3f} | "
                                  f"lr {sched.get_last_lr()[0]:.1e} | grad {grad_norm:.2f} | "
                                  f"{window_tokens / window_s / 1000:.1f}k tok/s")
                    window_tokens, window_s = 0, 0.0
                every = cfg.save_every_steps and step % cfg.save_every_steps == 0
                if every or step in save_steps or trained_s / 60 >= next_save_min:
                    while trained_s / 60 >= next_save_min:
                        next_save_min += cfg.save_every_minutes
                    save()
                if done():
                    break
    if not saved or saved[-1].step != step:
        save()
    return saved
