"""`ringrl eval CKPT`: held-out pass@1 (greedy, sampled) and pass@k of a checkpoint."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer


class TaskChoice(str, Enum):
    math = "math"
    code = "code"
    all = "all"


def register(app: typer.Typer) -> None:
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
    ) -> None:
        """Held-out accuracy of CHECKPOINT: greedy pass@1, sampled pass@1, pass@k."""
        from actors.cli import fail
        from actors.tasks import TaskDataError

        try:
            from actors.evaluate import expand_checkpoints, task_set
            from protocol.schema import TaskKind

            paths = expand_checkpoints([checkpoint])
            if len(paths) != 1:
                raise ValueError(f"{checkpoint}: holds {len(paths)} checkpoints; name one of them")
            path = paths[0]
            if samples is not None and samples < k:
                raise ValueError(f"--samples ({samples}) must be at least --k ({k})")
            kind = None if task == TaskChoice.all else TaskKind(task.value)
            items = task_set(data, "held_out", n, kind, seed)
        except (ValueError, TaskDataError) as exc:
            fail(str(exc))
        from rich.console import Console

        from actors.evaluate import eval_table, evaluate, rows_as_dicts

        rows = evaluate(path, items, k=k, samples=samples, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed)
        Console().print(eval_table(rows, f"held-out accuracy of {checkpoint}"))
        if json_out is not None:
            json_out.write_text(json.dumps({"checkpoint": str(checkpoint), "rows": rows_as_dicts(rows)}, indent=2))
