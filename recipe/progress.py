"""What a `ringrl train` run has finished, kept on disk so that `ringrl train --resume RUN_DIR` goes
on from there instead of starting over.

`progress.json` is rewritten (atomically) at each milestone: the chosen SFT checkpoint and its
held-out results, the start of each stage (the version and step it started at, its "before"
measure) and the end of each stage (its result and "after" measure). A run killed inside a stage
resumes that stage from the learner's newest checkpoint in `stages/<name>/checkpoints` — model,
AdamW state, scheduler, batcher (carried-over tokens, dedup window) — and runs only the steps left.
Groups that were in the killed run's Redis and not yet held by a checkpoint were never trained;
the resumed stage generates new ones in their place.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learner.checkpoint import PREFIX, latest_checkpoint
from recipe.evaluate import Outcomes
from recipe.stage import StageResult
from recipe.tasks import TaskItem

PROGRESS_FILE = "progress.json"


def outcomes_to_json(o: Outcomes) -> dict[str, Any]:
    return {**asdict(o), "items": [it.model_dump(mode="json") for it in o.items]}


def outcomes_from_json(d: dict[str, Any]) -> Outcomes:
    return Outcomes(**{**d, "items": [TaskItem.model_validate(it) for it in d["items"]]})


@dataclass
class FinishedStage:
    result: StageResult
    before: Outcomes
    after: Outcomes
    seconds: float


@dataclass
class RunProgress:
    start: str = ""  # the chosen SFT checkpoint RL starts from
    sft_start: dict[str, Outcomes] = field(default_factory=dict)  # per stage: the start on its sources
    finished: dict[str, FinishedStage] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)  # the stage in progress: name, version, step, before

    def save(self, out: Path) -> None:
        doc = {"start": self.start,
               "sft_start": {k: outcomes_to_json(v) for k, v in self.sft_start.items()},
               "finished": {k: {"result": asdict(f.result), "before": outcomes_to_json(f.before),
                                "after": outcomes_to_json(f.after), "seconds": f.seconds}
                            for k, f in self.finished.items()},
               "current": {**self.current, "before": outcomes_to_json(self.current["before"])}
               if self.current else {}}
        tmp = out / (PROGRESS_FILE + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, out / PROGRESS_FILE)  # a kill mid-write leaves the previous milestone

    @classmethod
    def load(cls, out: Path) -> RunProgress:
        path = out / PROGRESS_FILE
        if not path.is_file():
            return cls()
        doc = json.loads(path.read_text())
        current = doc["current"]
        return cls(start=doc["start"],
                   sft_start={k: outcomes_from_json(v) for k, v in doc["sft_start"].items()},
                   finished={k: FinishedStage(StageResult(**f["result"]), outcomes_from_json(f["before"]),
                                              outcomes_from_json(f["after"]), f["seconds"])
                             for k, f in doc["finished"].items()},
                   current={**current, "before": outcomes_from_json(current["before"])} if current else {})


def resumed_stage_step(out: Path, current: dict[str, Any]) -> int:
    """Steps of the stage in progress that its newest learner checkpoint holds (0: none)."""
    ckpt = latest_checkpoint(out / "stages" / current["name"] / "checkpoints")
    return 0 if ckpt is None else int(ckpt.name.removeprefix(PREFIX)) - current["version"]
