"""The group: n sampled responses to one prompt, the unit that moves between the parts."""

from __future__ import annotations

import time
import uuid
from enum import Enum
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

SCHEMA_VERSION = 1
"""Bumped on any change a reader of the previous version would misread."""


def _as_int32(value: object) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.int32).reshape(-1)


def _as_float32(value: object) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32).reshape(-1)


TokenIds = Annotated[
    np.ndarray, BeforeValidator(_as_int32), PlainSerializer(lambda a: a.tolist(), when_used="json")
]
"""Token ids, held as a contiguous int32 array."""

LogProbs = Annotated[
    np.ndarray, BeforeValidator(_as_float32), PlainSerializer(lambda a: a.tolist(), when_used="json")
]
"""Per-token log-probabilities, held as a contiguous float32 array."""


class _Model(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")


class TaskKind(str, Enum):
    math = "math"
    code = "code"


class FinishReason(str, Enum):
    stop = "stop"
    length = "length"
    abort = "abort"


class VerdictStatus(str, Enum):
    correct = "correct"
    wrong = "wrong"
    no_answer = "no_answer"
    timeout = "timeout"
    runtime_error = "runtime_error"
    compile_error = "compile_error"
    limit_exceeded = "limit_exceeded"


class MathReference(_Model):
    kind: Literal["math"] = "math"
    answer: str = Field(description="The gold answer, compared by Math-Verify.")


class IOTest(_Model):
    stdin: str = Field(default="", description="Fed to the program on standard input.")
    stdout: str = Field(description="Expected output, compared whitespace-normalised.")


class CodeReference(_Model):
    kind: Literal["code"] = "code"
    io_tests: list[IOTest] = Field(default_factory=list, description="stdin/stdout pairs.")
    test_code: str | None = Field(
        default=None, description="Python test snippet defining check(candidate) (HumanEval form)."
    )
    entry_point: str | None = Field(
        default=None, description="Name of the function check() is called with."
    )


Reference = Annotated[Union[MathReference, CodeReference], Field(discriminator="kind")]


class Verdict(_Model):
    status: VerdictStatus
    detail: str = Field(default="", description="Short human-readable reason.")


class Response(_Model):
    token_ids: TokenIds = Field(description="Sampled response tokens (prompt excluded).")
    logprobs: LogProbs = Field(description="Behaviour log-prob of each sampled token.")
    text: str = Field(default="", description="Detokenised response, for the verifiers.")
    finish_reason: FinishReason = FinishReason.stop
    policy_version: int = Field(ge=0, description="Weight version that generated this response.")
    reward: float | None = Field(default=None, description="Set by the reward side.")
    verdict: Verdict | None = Field(default=None, description="Set by the reward side.")

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> "Response":
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} tokens but {len(self.logprobs)} log-probs")
        return self


def new_group_id() -> str:
    return uuid.uuid4().hex


class Group(_Model):
    group_id: str = Field(default_factory=new_group_id)
    prompt_id: str
    task: TaskKind
    stage: str = Field(default="", description="Name of the run stage this group belongs to.")
    prompt_text: str = ""
    prompt_token_ids: TokenIds
    reference: Reference
    responses: list[Response]
    created_at: float = Field(default_factory=time.time, description="Prompt submitted (unix s).")
    finished_at: float | None = Field(default=None, description="Last response finished.")
    scored_at: float | None = Field(default=None, description="Rewards written.")

    @property
    def policy_version(self) -> int:
        """The oldest version that contributed: what the staleness bound is measured against."""
        return min(r.policy_version for r in self.responses)

    @property
    def scored(self) -> bool:
        return all(r.reward is not None for r in self.responses)

    @property
    def rewards(self) -> np.ndarray:
        if not self.scored:
            raise ValueError(f"group {self.group_id} is not scored yet")
        return np.array([r.reward for r in self.responses], dtype=np.float64)
