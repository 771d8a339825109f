"""`ringrl eval CKPT`: held-out pass@1 (greedy, sampled) and pass@k of a checkpoint."""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import typer

from cli.sandbox import SANDBOX_HELP, SandboxChoice, scorer_or_fail


class TaskChoice(str, Enum):
    math = "math"
    code = "code"
    all = "all"


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        checkpoint: Path = typer.Argument(..., help="Model folder (Hugging Face format)."),
        task: TaskChoice = typer.Option(TaskChoice.all, help="Which task kind to evaluate."),
        n: int = typer.Option(100, min=1, help="Held-out items per built-in source."),
        k: int = typer.Option(4, min=1, help="k of pass@k."),
        samples: int | None = typer.Option(None, min=1, help="Samples per item for pass@k (default k)."),
        temperature: float = typer.Option(1.0, min=0.0, help="Sampling temperature of the sampled metrics."),
        data: Path | None = typer.Option(None, help="JSONL task file instead of the built-in held-out set."),
        max_new_tokens: int = typer.Option(64, min=1, help="Longest response, in tokens."),
        seed: int = typer.Option(0, help="Seed of the built-in tasks and of sampling."),
        json_out: Path | None = typer.Option(None, "--json", help="Also write the rows as JSON here."),
        against: Path | None = typer.Option(
            None, help="A second checkpoint (e.g. the SFT start): also print CHECKPOINT's paired gain over it, "
                       "item by item on the same held-out items, with 95% intervals."),
        sandbox: SandboxChoice = typer.Option(SandboxChoice.warm, help=SANDBOX_HELP),
    ) -> None:
        """Held-out accuracy of CHECKPOINT: greedy pass@1, sampled pass@1, pass@k."""
        from cli.errors import fail
        from recipe.tasks import TaskDataError

        try:
            from protocol.schema import TaskKind
            from recipe.evaluate import expand_checkpoints, task_set

            def one_checkpoint(folder: Path, name: str) -> Path:
                paths = expand_checkpoints([folder])
                if len(paths) != 1:
                    raise ValueError(f"{name}: holds {len(paths)} checkpoints; name one of them")
                return paths[0]

            path = one_checkpoint(checkpoint, str(checkpoint))
            base = None if against is None else one_checkpoint(against, f"--against {against}")
            if samples is not None and samples < k:
                raise ValueError(f"--samples ({samples}) must be at least --k ({k})")
            kind = None if task == TaskChoice.all else TaskKind(task.value)
            items = task_set(data, "held_out", n, kind, seed)
        except (ValueError, TaskDataError) as exc:
            fail(str(exc))
        from rich.console import Console

        from recipe.evaluate import (
            eval_rows,
            eval_table,
            gain_table,
            outcomes,
            paired_gain,
            rows_as_dicts,
        )

        scorer = scorer_or_fail(sandbox)
        knobs = dict(samples=samples or k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        with closing(scorer):
            out = outcomes(path, items, scorer, **knobs)
            rows = eval_rows(out, k)
            console = Console()
            console.print(eval_table(rows, f"held-out accuracy of {checkpoint}"))
            report: dict[str, object] = {"checkpoint": str(checkpoint), "rows": rows_as_dicts(rows)}
            if base is not None:
                base_out = outcomes(base, items, scorer, **knobs)
                console.print(eval_table(eval_rows(base_out, k), f"held-out accuracy of {against}"))
                console.print(gain_table(base_out, out, f"{checkpoint} over {against}, paired by item"))
                report["against"] = str(against)
                report["gain"] = {"greedy": asdict(paired_gain(base_out, out)),
                                  "sampled": asdict(paired_gain(base_out, out, sampled=True))}
        if json_out is not None:
            json_out.write_text(json.dumps(report, indent=2))
