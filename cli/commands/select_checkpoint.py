"""`ringrl select-checkpoint CKPT...`: entropy-based choice of the checkpoint RL starts from."""

from __future__ import annotations

import json
from contextlib import closing, nullcontext
from pathlib import Path

import typer

from cli.sandbox import SANDBOX_HELP, SandboxChoice, scorer_or_fail


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @app.command("select-checkpoint")
    def select_checkpoint_cmd(
        checkpoints: list[Path] = typer.Argument(..., help="Model folders, or folders of them (an SFT output dir)."),
        probe: Path | None = typer.Option(None, help="JSONL probe prompts (default: built-in train items)."),
        held_out: Path | None = typer.Option(None, help="JSONL held-out items (default: built-in held-out)."),
        lo: float = typer.Option(0.15, help="Lower edge of the target entropy band (nats/token)."),
        hi: float = typer.Option(0.45, help="Upper edge of the target entropy band (nats/token)."),
        probe_size: int = typer.Option(64, min=1, help="Built-in probe prompts per source."),
        eval_size: int = typer.Option(100, min=0, help="Built-in held-out items per source (0: no accuracy)."),
        samples: int = typer.Option(2, min=1, help="T=1 samples per probe prompt."),
        max_new_tokens: int = typer.Option(64, min=1, help="Longest response, in tokens."),
        seed: int = typer.Option(0, help="Seed of the built-in tasks and of sampling."),
        json_out: Path | None = typer.Option(None, "--json", help="Also write the table and choice here."),
        sandbox: SandboxChoice = typer.Option(SandboxChoice.warm, help=SANDBOX_HELP),
    ) -> None:
        """Measure each checkpoint's mean token entropy and held-out accuracy; pick one in the band."""
        from cli.errors import fail
        from recipe.tasks import TaskDataError

        try:
            if lo > hi:
                raise ValueError(f"--lo {lo} is above --hi {hi}: the band is empty")
            from protocol.config.selection import SelectionConfig
            from recipe.evaluate import expand_checkpoints, task_set
            from recipe.selection import select_checkpoint

            paths = expand_checkpoints(checkpoints)
            cfg = SelectionConfig(entropy_lo=lo, entropy_hi=hi, probe_size=probe_size, eval_size=eval_size,
                                  samples_per_prompt=samples, max_new_tokens=max_new_tokens, seed=seed)
            probe_items = task_set(probe, "train", probe_size, None, seed)
            held = task_set(held_out, "held_out", eval_size, None, seed) if held_out or eval_size else []
        except (ValueError, TaskDataError) as exc:
            fail(str(exc))
        with closing(scorer_or_fail(sandbox)) if held else nullcontext(None) as scorer:
            chosen, stats = select_checkpoint(paths, probe_items, held, cfg, scorer=scorer)
        if json_out is not None:
            json_out.write_text(json.dumps({"chosen": chosen.path, "band": [lo, hi],
                                            "checkpoints": [s.__dict__ for s in stats]}, indent=2))
