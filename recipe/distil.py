"""Distillation (SFT) as the recipe runs it: the start model, the teacher examples, the checkpoints.

`ringrl train` and `ringrl sft` both come through here, so they build the same model from the same
settings and train it on the same examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

from protocol.config.model import ModelSection
from protocol.config.selection import SelectionConfig
from protocol.config.sft import SFTConfig
from protocol.config.tasks import TasksConfig
from protocol.config.train import SFTRunConfig
from recipe.tasks import build_tasks, sft_examples, tokenizer_corpus


def prepare_model(model: ModelSection, tasks: TasksConfig, seed: int, out: Path, console: Console) -> str:
    """model.path, or the tiny MoE built at out/init with a tokenizer trained on the task text."""
    if model.path:
        return model.path
    from learner.models.tiny import build_tiny_model

    path = build_tiny_model(out / "init", model.arch, texts=tokenizer_corpus(tasks), seed=seed,
                            vocab_size=model.vocab_size, hidden=model.hidden, layers=model.layers,
                            experts=model.experts, top_k=model.top_k, expert_ffn=model.expert_ffn)
    console.print(f"built tiny {model.arch} model at {path}")
    return str(path)


def distil(sft: SFTConfig, tasks: TasksConfig, console: Console,
           on_checkpoint: Callable[[Any], None] | None = None) -> list[str]:
    """Train sft.init_model on the teacher solutions of the train split; the checkpoint folders."""
    from learner.sft import train_sft

    examples = sft_examples(build_tasks(tasks, "train"))
    steps = f"{sft.max_steps} steps" if sft.max_steps else ""
    minutes = f"{sft.max_minutes} min" if sft.max_minutes else ""
    limit = " or ".join(x for x in (steps, minutes) if x)
    console.rule(f"SFT: {len(examples)} teacher examples, batch {sft.batch_size}, {limit}")
    return [str(c.path) for c in train_sft(sft, examples, on_checkpoint=on_checkpoint, console=console)]


def run_sft(cfg: SFTRunConfig, eval_n: int, console: Console) -> list[dict[str, Any]]:
    """`ringrl sft`: build the model if needed, train, optionally measure each checkpoint; rows of the log.

    The measuring is scored by the reward service's Scorer with default settings (sandboxed code);
    it starts before training, so a machine without a working sandbox fails before minutes of SFT.
    """
    from recipe.selection import measure
    from recipe.verdicts import standalone_scorer

    sft = cfg.sft
    if not sft.init_model:
        init = prepare_model(cfg.model, cfg.tasks, cfg.run.seed, Path(sft.output_dir), console)
        sft = sft.model_copy(update={"init_model": init})
    rows: list[dict[str, Any]] = []
    held = build_tasks(cfg.tasks.model_copy(update={"held_out_size": eval_n}), "held_out") if eval_n else []
    sel = SelectionConfig(seed=cfg.run.seed)
    with closing(standalone_scorer()) if held else nullcontext(None) as scorer:

        def on_checkpoint(ckpt: Any) -> None:
            row: dict[str, Any] = {"path": str(ckpt.path), "step": ckpt.step, "minutes": round(ckpt.minutes, 3),
                                   "loss": round(ckpt.loss, 4)}
            if held:
                stats = measure(ckpt.path, held, held, sel, scorer)
                row |= {"entropy": round(stats.entropy, 4), "accuracy": round(stats.accuracy, 4)}
                console.print(f"sft eval step {ckpt.step} | {ckpt.minutes:.2f} min | held-out acc "
                              f"{stats.accuracy:.3f} | entropy {stats.entropy:.3f}")
            rows.append(row)

        distil(sft, cfg.tasks, console, on_checkpoint)
    log = Path(sft.output_dir) / "checkpoints.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"sft done: {len(rows)} checkpoints, listed in {log}")
    return rows
