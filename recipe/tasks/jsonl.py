"""User task files: one JSON object per line (schema in docs/data.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.schema import CodeReference, IOTest, MathReference, TaskKind
from recipe.tasks.items import TaskItem, make_item

USER_SOURCE = "jsonl"
"""All user items share one source name, so equal questions in two files are the same item."""


class TaskDataError(ValueError):
    """A user task file that cannot be read; str() is one line naming file, line and field."""


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    task: Literal["math", "code"]
    answer: str | None = Field(default=None, min_length=1)
    tests: list[IOTest] | None = None
    test_code: str | None = None
    entry_point: str | None = None
    solution: str | None = None

    @model_validator(mode="after")
    def _reference_fits_task(self) -> _Line:
        if self.task == "math":
            if self.answer is None:
                raise ValueError("answer: required for a math task")
            if self.tests or self.test_code or self.entry_point:
                raise ValueError("tests/test_code/entry_point: only for code tasks")
        else:
            if self.answer is not None:
                raise ValueError("answer: only for math tasks (code is checked by tests)")
            if not self.tests and not self.test_code:
                raise ValueError("tests: a code task needs `tests` or `test_code` + `entry_point`")
            if self.test_code and not self.entry_point:
                raise ValueError("entry_point: required with test_code")
        return self


def _error_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = "unknown field (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def parse_line(obj: object) -> TaskItem:
    line = _Line.model_validate(obj)
    if line.task == "math":
        assert line.answer is not None
        return make_item(TaskKind.math, USER_SOURCE, line.prompt, MathReference(answer=line.answer),
                         line.solution)
    ref = CodeReference(io_tests=line.tests or [], test_code=line.test_code, entry_point=line.entry_point)
    return make_item(TaskKind.code, USER_SOURCE, line.prompt, ref, line.solution)


def load_jsonl(path: str | Path) -> list[TaskItem]:
    """Every item of a user file; the first bad line raises TaskDataError `file:line: field: why`."""
    p = Path(path)
    if not p.is_file():
        raise TaskDataError(f"{p}: task file not found")
    items = []
    with p.open(encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"{p}:{n}: not valid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise TaskDataError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
            try:
                items.append(parse_line(obj))
            except ValidationError as exc:
                raise TaskDataError(f"{p}:{n}: {_error_line(exc)}") from None
    if not items:
        raise TaskDataError(f"{p}: no task items in file")
    return items
