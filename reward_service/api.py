"""Payloads of the scoring HTTP API, bounded by the reward config.

The bounds and the cross-field rules are in the models, so they are also in the OpenAPI document:
a client sees what will be refused, and a fuzzer that generates from the document only sends
items the server accepts (or, negated, ones it refuses).
"""

# No `from __future__ import annotations`: the request models are built inside a function from the
# config's bounds, and pydantic must see those local values, not strings naming them.

from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.config.reward import RewardConfig
from protocol.schema import CodeReference, MathReference, Reference, VerdictStatus

ENTRY_POINT = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""An ASCII Python name: it is one field of the harness header, anything else would shift the rest."""


def _text(max_chars: int, description: str, **more: Any) -> Any:
    """A string of at most `max_chars` characters, as an annotated type. A bounded string is checked
    by pydantic-core as UTF-8, so one JSON can carry but UTF-8 cannot (a lone surrogate, "\\ud800")
    is refused there (`string_unicode`), naming the field, before a verifier could fail on it
    (tests/reward/test_edge.py holds every field to it)."""
    return Annotated[str, Field(max_length=max_chars, description=description, **more)]


_TESTS_RULES = {
    # JSON Schema for what Tests._rules checks, so generators and clients see it too.
    "anyOf": [{"required": ["io_tests"], "properties": {"io_tests": {"minItems": 1}}},
              {"required": ["test_code"], "properties": {"test_code": {"type": "string"}}}],
    "if": {"required": ["test_code"], "properties": {"test_code": {"type": "string"}}},
    "then": {"required": ["entry_point"], "properties": {"entry_point": {"type": "string"}}},
}


EXAMPLE = {"items": [  # in the document: for a reader, and as the fuzzer's first cases
    {"task": "math", "response": "Half of it: \\boxed{\\frac{1}{2}}", "answer": "0.5"},
    {"task": "code", "response": "```python\nprint(int(input()) * 2)\n```",
     "tests": {"io_tests": [{"stdin": "21\n", "stdout": "42"}]}},
    {"task": "code", "response": "```python\ndef double(x):\n    return 2 * x\n```",
     "tests": {"test_code": "def check(f):\n    assert f(4) == 8\n", "entry_point": "double"}},
]}


class Scorable(Protocol):
    """What the server reads from an item of either kind."""

    task: str
    response: str

    def reference(self) -> Reference: ...


def score_request_model(cfg: RewardConfig) -> type[BaseModel]:
    """The POST /v1/score body, with `cfg`'s bounds (they differ between deployments)."""

    class IOTest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        stdin: _text(cfg.max_test_chars, "Fed to the program on standard input.") = ""  # type: ignore[valid-type]
        stdout: _text(cfg.max_test_chars, "Expected output, compared whitespace-normalised.")  # type: ignore[valid-type]

    class Tests(BaseModel):
        """Give io_tests (at least one) or test_code, or both; test_code needs entry_point. The
        program runs once per io_test, then once with test_code; it stops at the first failure."""

        model_config = ConfigDict(extra="forbid", json_schema_extra=_TESTS_RULES)
        io_tests: list[IOTest] = Field(
            default_factory=list, max_length=cfg.max_io_tests,
            description="stdin/stdout pairs, each one sandboxed run of the program.")
        test_code: _text(cfg.max_test_chars, "Snippet defining check(candidate) (HumanEval form).",  # type: ignore[valid-type]
                         min_length=1) | None = None
        entry_point: _text(128, "Function passed to check(): an ASCII Python name; "  # type: ignore[valid-type]
                                "required with test_code.", pattern=ENTRY_POINT) | None = None

        @model_validator(mode="after")
        def _rules(self) -> "Tests":
            if not self.io_tests and self.test_code is None:
                raise ValueError("give io_tests or test_code")
            if self.test_code is not None and self.entry_point is None:
                raise ValueError("entry_point: required with test_code")
            return self

    response_field = _text(cfg.max_response_chars, "The model's full response text.")

    class MathItem(BaseModel):
        """Scored by Math-Verify: the last \\boxed{} of the response against the answer."""

        model_config = ConfigDict(extra="forbid")
        task: Literal["math"]
        response: response_field  # type: ignore[valid-type]
        answer: _text(cfg.max_answer_chars, "Reference answer (LaTeX or plain).")  # type: ignore[valid-type]

        def reference(self) -> Reference:
            return MathReference(answer=self.answer)

    class CodeItem(BaseModel):
        """Scored in the sandbox: the last ```python block of the response against the tests."""

        model_config = ConfigDict(extra="forbid")
        task: Literal["code"]
        response: response_field  # type: ignore[valid-type]
        tests: Tests = Field(description="Tests to pass.")

        def reference(self) -> Reference:
            return CodeReference(**self.tests.model_dump())

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid",
                                  json_schema_extra={"examples": [{"items": EXAMPLE["items"][:cfg.max_batch]}]})
        items: list[Annotated[MathItem | CodeItem, Field(discriminator="task")]] = Field(
            min_length=1, max_length=cfg.max_batch,
            description="Responses to score; `task` says which fields an item has (math: answer, "
                        "code: tests). Results come back in the same order.")

    return ScoreRequest


class ScoreResult(BaseModel):
    reward: float = Field(ge=0, le=1, description="1 if correct, else 0.")
    status: VerdictStatus = Field(description="Why: correct, wrong, no_answer (nothing to score), "
                                              "timeout, runtime_error, compile_error, limit_exceeded.")
    detail: str = Field(description="Short human-readable reason.")


class ScoreResponse(BaseModel):
    results: list[ScoreResult] = Field(description="One per item, in order.")


class ErrorBody(BaseModel):
    """Every refusal (400, 401, 403, 413, 422) has this shape."""

    detail: str = Field(description="What is wrong, after the field it concerns: 'items.0.answer: "
                                    "Field required'. Several problems are joined by '; '.")
    field: str | None = Field(
        default=None,
        description="Dotted path of the (first) offending field, e.g. items.0.tests.io_tests.3.stdin; "
                    "'authorization' for 401/403; 'body' when the body is not JSON; absent when the "
                    "body is refused for its size (413).")


class Health(BaseModel):
    """/healthz and /readyz: 200 when up, 503 with the same body when not."""

    model_config = ConfigDict(extra="allow")
    ok: bool = Field(description="Alive: every math worker is running (and the service's loops). "
                                 "Without a valid token /healthz answers this alone.")
    ready: bool | None = Field(default=None, description="Can score now (/readyz); with stream workers, "
                                                        "also Redis and every worker.")
