"""Payloads of the scoring HTTP API."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from protocol.schema import (
    CodeReference,
    IOTest,
    MathReference,
    Reference,
    TaskKind,
    VerdictStatus,
)


def _utf8(value: str | None) -> str | None:
    """Refuse strings JSON can carry but UTF-8 cannot (lone surrogates, e.g. "\\ud800"): the field
    is named in the 422 instead of a 500 inside the verifier."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"not valid Unicode (lone surrogate at index {exc.start})") from None
    return value


Utf8 = Annotated[str, AfterValidator(_utf8)]


class Tests(BaseModel):
    model_config = ConfigDict(extra="forbid")
    io_tests: list[IOTest] = Field(default_factory=list, description="stdin/stdout pairs.")
    test_code: Utf8 | None = Field(default=None, description="Snippet defining check(candidate).")
    entry_point: Utf8 | None = Field(default=None, description="Function passed to check() (a Python name).")

    @model_validator(mode="after")
    def _some_test(self) -> Tests:
        if not self.io_tests and not self.test_code:
            raise ValueError("tests: give io_tests or test_code")
        if self.test_code and not self.entry_point:
            raise ValueError("tests.entry_point is required with tests.test_code")
        if self.entry_point is not None and not self.entry_point.isidentifier():
            raise ValueError("tests.entry_point must be a Python identifier")
        for i, t in enumerate(self.io_tests):
            for name in ("stdin", "stdout"):
                try:
                    _utf8(getattr(t, name))
                except ValueError as exc:
                    raise ValueError(f"tests.io_tests.{i}.{name}: {exc}") from None
        return self


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: TaskKind
    response: Utf8 = Field(description="The model's full response text.")
    answer: Utf8 | None = Field(default=None, description="Reference answer (math).")
    tests: Tests | None = Field(default=None, description="Tests to pass (code).")

    @model_validator(mode="after")
    def _reference_matches_task(self) -> ScoreItem:
        if self.task is TaskKind.math and self.answer is None:
            raise ValueError("answer is required for a math item")
        if self.task is TaskKind.code and self.tests is None:
            raise ValueError("tests is required for a code item")
        return self

    def reference(self) -> Reference:
        if self.task is TaskKind.math:
            assert self.answer is not None
            return MathReference(answer=self.answer)
        assert self.tests is not None
        return CodeReference(**self.tests.model_dump())


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ScoreItem] = Field(min_length=1, description="Responses to score.")


class ScoreResult(BaseModel):
    reward: float = Field(description="1 if correct, else 0.")
    status: VerdictStatus
    detail: str


class ScoreResponse(BaseModel):
    results: list[ScoreResult]
