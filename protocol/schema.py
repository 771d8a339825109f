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

SCHEMA_VERSION = 3
"""Bumped on any change a reader of the previous version would misread. v2: responses may carry
`routed_experts` (a v1 reader would drop them silently, so it refuses v2 messages). v3: a response's
tokens may come from several weight versions (`token_versions`; a v2 reader would take them all for
`policy_version`'s, so it refuses v3 messages)."""


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


def _as_expert_ids(value: object) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 3:
        raise ValueError(f"routed_experts: expected [positions, layers, k], got {a.ndim} dimensions")
    if a.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(a)
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 65535):
        raise ValueError("routed_experts: expert ids must be integers in [0, 65535]")
    return np.ascontiguousarray(a, dtype=np.uint8 if not a.size or a.max() < 256 else np.uint16)


ExpertIds = Annotated[
    np.ndarray, BeforeValidator(_as_expert_ids),
    PlainSerializer(lambda a: a.tolist(), when_used="json"),
]
"""Routed expert ids [positions, MoE layers, k], uint8 (up to 256 experts) or uint16: the routing
is ~layers * k bytes per token, as much as the tokens and log-probs together for a small MoE."""


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


VersionSegments = list[tuple[int, int]]
"""(first token index, weight version) per run of tokens one version sampled, in token order."""


class Response(_Model):
    token_ids: TokenIds = Field(description="Sampled response tokens (prompt excluded).")
    logprobs: LogProbs = Field(description="Behaviour log-prob of each sampled token.")
    text: str = Field(default="", description="Detokenised response, for the verifiers.")
    finish_reason: FinishReason = FinishReason.stop
    policy_version: int = Field(
        ge=0, description="The oldest weight version that sampled one of its tokens (the only one unless "
                          "a weight update continued the response: see token_versions).")
    token_versions: VersionSegments = Field(
        default_factory=list,
        description="The version that sampled each token, as (first token index, version) segments: "
                    "[(0, 3), (40, 4)] is tokens 0-39 by version 3 and the rest by version 4. Starts at 0, "
                    "strictly increasing, adjacent versions differ; empty input means [(0, policy_version)].")
    reward: float | None = Field(default=None, description="Set by the reward side.")
    verdict: Verdict | None = Field(default=None, description="Set by the reward side.")
    routed_experts: ExpertIds | None = Field(
        default=None,
        description="Experts the engine routed each position to, [positions, MoE layers, k] in layer "
                    "order, for routing replay: one row per position of prompt + response[:-1] (the "
                    "positions whose forward sampled a response token). None when not recorded.")

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> "Response":
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} tokens but {len(self.logprobs)} log-probs")
        if not self.token_versions:
            self.token_versions = [(0, self.policy_version)]
        check_token_versions(self.token_versions, len(self.token_ids), self.policy_version)
        return self

    @property
    def newest_version(self) -> int:
        """The newest weight version that sampled one of its tokens."""
        return max(v for _, v in self.token_versions)

    def versions(self) -> np.ndarray:
        """The weight version of each token, [len(token_ids)] int64."""
        out = np.empty(len(self.token_ids), dtype=np.int64)
        ends = [s for s, _ in self.token_versions[1:]] + [len(out)]
        for (start, version), end in zip(self.token_versions, ends):
            out[start:end] = version
        return out


def check_token_versions(segments: VersionSegments, num_tokens: int, policy_version: int) -> None:
    """Raise ValueError unless `segments` are canonical version segments of `num_tokens` tokens whose
    oldest version is `policy_version`."""
    if not segments or segments[0][0] != 0:
        raise ValueError("token_versions: must start with the segment at token 0")
    for (s0, v0), (s1, v1) in zip(segments, segments[1:]):
        if s1 <= s0 or s1 >= num_tokens:
            raise ValueError(f"token_versions: segment start {s1} is not after {s0} and inside the "
                             f"{num_tokens} tokens")
        if v1 == v0:
            raise ValueError(f"token_versions: adjacent segments with the same version {v0}")
    oldest = min(v for _, v in segments)
    if oldest < 0 or oldest != policy_version:
        raise ValueError(f"token_versions: oldest version {oldest} is not policy_version {policy_version}")


def check_routing_rows(rows: int, prompt_len: int, response_len: int, index: int) -> None:
    """A response's routing has one row per position that sampled one of its tokens."""
    if rows != max(prompt_len + response_len - 1, 0):
        raise ValueError(f"responses.{index}.routed_experts: {rows} positions, expected prompt "
                         f"({prompt_len}) + response ({response_len}) - 1")


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

    @model_validator(mode="after")
    def _routing_covers_the_sequence(self) -> "Group":
        for i, r in enumerate(self.responses):
            if r.routed_experts is not None:
                check_routing_rows(len(r.routed_experts), len(self.prompt_token_ids), len(r.token_ids), i)
        return self

    @property
    def policy_version(self) -> int:
        """The oldest version that sampled one of its tokens."""
        return min(r.policy_version for r in self.responses)

    @property
    def scored(self) -> bool:
        return all(r.reward is not None for r in self.responses)

    @property
    def rewards(self) -> np.ndarray:
        if not self.scored:
            raise ValueError(f"group {self.group_id} is not scored yet")
        return np.array([r.reward for r in self.responses], dtype=np.float64)
