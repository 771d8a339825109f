"""What a training run leaves behind per step: a JSONL row, TensorBoard scalars, a console line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from recipe.plots import TensorBoardLogger

LINE_FIELDS = (("reward", "reward {:.3f}"), ("accuracy", "held-out {:.3f}"),
               ("accuracy_sampled", "sampled {:.3f}"), ("entropy", "entropy {:.3f}"),
               ("grad_norm", "gnorm {:.3f}"), ("tokens", "tokens {:.0f}"), ("staleness_max", "stale≤{:.0f}"),
               ("rollout_tok_s", "gen {:.0f} tok/s"), ("train_tok_s", "train {:.0f} tok/s"))


class RunLog:
    def __init__(self, out_dir: Path, console: Console, append: bool = False) -> None:
        """`append`: continue the log a restarted process left (services-mode driver); otherwise a
        run starts its own file, as rows of an earlier run in the same folder would be read as this
        run's (per-step timings across runs)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        if append and self.path.is_file():
            self.rows = [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]
        self._file = self.path.open("a" if append else "w")
        self.tb = TensorBoardLogger(out_dir / "tensorboard")
        self.console = console

    def log(self, row: dict[str, Any], line: bool = True) -> None:
        clean = {k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))}
        self.rows.append(clean)
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        self.tb.log(clean)
        if line:
            parts = [escape(f"[{row.get('stage', '')}]") + f" step {row['step']:>4}"]
            parts += [fmt.format(clean[k]) for k, fmt in LINE_FIELDS if isinstance(clean.get(k), (int, float))]
            self.console.print("  ".join(parts), highlight=False)

    def drop_after(self, stage: str, stage_step: int) -> None:
        """Forget `stage`'s rows past `stage_step` (a resumed stage trains those steps again)."""
        self.rows = [r for r in self.rows if not (r.get("stage") == stage and r.get("stage_step", 0) > stage_step)]
        self._file.close()
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._file = self.path.open("a")

    def close(self) -> None:
        self._file.close()
        self.tb.close()
