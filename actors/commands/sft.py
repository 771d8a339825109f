"""`ringrl sft [CONFIG]`: distillation of the tiny MoE (or a given model) on teacher solutions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field
from rich.console import Console

from protocol.config import ConfigError, load_config
from protocol.config.base import Section
from protocol.config.run import RunSection

from learner.sft_config import SFTConfig

from actors.tasks import TaskDataError, TasksConfig, build_tasks, sft_examples, tokenizer_corpus


class ModelSection(Section):
    # Same names as learner.models.tiny.Arch, spelled out so loading a config does not import torch.
    arch: Literal["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "qwen3", "qwen2"] = Field(
        default="qwen3_moe", description="Tiny model architecture built when sft.init_model is empty.")
    vocab_size: int = Field(default=640, gt=2, description="BPE vocabulary asked of the tokenizer trainer.")
    seed: int = Field(default=0, description="Initialisation seed of the tiny model.")


class SFTRunConfig(Section):
    run: RunSection = Field(default_factory=RunSection, description="Run identity and outputs.")
    model: ModelSection = Field(default_factory=ModelSection, description="The model SFT starts from.")
    tasks: TasksConfig = Field(default_factory=TasksConfig, description="Training and held-out data.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Distillation settings.")


def run_sft(cfg: SFTRunConfig, eval_n: int, console: Console) -> list[dict[str, Any]]:
    """Build the model if needed, train, optionally measure each checkpoint; rows of the log."""
    from actors.entropy import SelectionConfig, measure
    from learner.models.tiny import build_tiny_model
    from learner.sft import SFTCheckpoint, train_sft

    sft = cfg.sft
    if not sft.init_model:
        init = Path(sft.output_dir) / "init"
        build_tiny_model(init, cfg.model.arch, texts=tokenizer_corpus(cfg.tasks), seed=cfg.model.seed,
                         vocab_size=cfg.model.vocab_size)
        sft = sft.model_copy(update={"init_model": str(init)})
        console.print(f"built tiny {cfg.model.arch} model at {init}")
    examples = sft_examples(build_tasks(cfg.tasks, "train"))
    console.print(f"sft on {len(examples)} teacher examples")
    rows: list[dict[str, Any]] = []
    held = build_tasks(cfg.tasks.model_copy(update={"held_out_size": eval_n}), "held_out") if eval_n else []
    sel = SelectionConfig(seed=cfg.run.seed)

    def on_checkpoint(ckpt: SFTCheckpoint) -> None:
        row: dict[str, Any] = {"path": str(ckpt.path), "step": ckpt.step, "minutes": round(ckpt.minutes, 3),
                               "loss": round(ckpt.loss, 4)}
        if held:
            stats = measure(ckpt.path, held, held, sel)
            row |= {"entropy": round(stats.entropy, 4), "accuracy": round(stats.accuracy, 4)}
            console.print(f"sft eval step {ckpt.step} | {ckpt.minutes:.2f} min | held-out acc "
                          f"{stats.accuracy:.3f} | entropy {stats.entropy:.3f}")
        rows.append(row)

    train_sft(sft, examples, on_checkpoint=on_checkpoint, console=console)
    log = Path(sft.output_dir) / "checkpoints.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"sft done: {len(rows)} checkpoints, listed in {log}")
    return rows


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft_cmd(
        config: Path | None = typer.Argument(None, help="YAML with run/model/tasks/sft sections (defaults if omitted)."),
        eval_n: int = typer.Option(0, "--eval-n", min=0,
                                   help="Held-out items per source to score at each checkpoint (0: none)."),
    ) -> None:
        """Distil the model on teacher solutions, saving several checkpoints."""
        from actors.cli import fail

        try:
            cfg = load_config(config, model=SFTRunConfig)
            run_sft(cfg, eval_n, Console())
        except (ConfigError, TaskDataError, ValueError) as exc:
            fail(str(exc))
