"""MessagePack codec for groups. Arrays travel as raw little-endian bytes, not lists of numbers."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from pydantic import TypeAdapter, ValidationError

from protocol.schema import (
    SCHEMA_VERSION,
    FinishReason,
    Group,
    Reference,
    Response,
    TaskKind,
    Verdict,
    VerdictStatus,
    check_routing_rows,
    check_token_versions,
)

_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")
_EXPERT_DTYPES = {"u1": np.dtype("u1"), "u2": np.dtype("<u2")}


_REFERENCE: TypeAdapter = TypeAdapter(Reference)
_RESPONSE_FIELDS = set(Response.model_fields)
_GROUP_FIELDS = set(Group.model_fields)
_VERDICT_FIELDS = set(Verdict.model_fields)


class DecodeError(ValueError):
    """Bytes that are not a group this reader understands; the message says why."""


class SchemaVersionError(DecodeError):
    """A message written by a newer ringrl than this reader."""


def _response_to_wire(r: Any) -> dict[str, Any]:
    return {
        "tok": r.token_ids.astype(_I32, copy=False).tobytes(),
        "lp": r.logprobs.astype(_F32, copy=False).tobytes(),
        "text": r.text,
        "finish": r.finish_reason.value,
        "ver": r.policy_version,
        "tv": [list(seg) for seg in r.token_versions],
        "reward": r.reward,
        "verdict": None if r.verdict is None else [r.verdict.status.value, r.verdict.detail],
        "re": None if r.routed_experts is None else _routing_to_wire(r.routed_experts),
    }


def _routing_to_wire(a: np.ndarray) -> list[Any]:
    code = "u1" if a.dtype == np.uint8 else "u2"
    return [a.astype(_EXPERT_DTYPES[code], copy=False).tobytes(), code, a.shape[1], a.shape[2]]


def _routing(raw: Any, field: str) -> np.ndarray:
    _check(raw, list, field)
    if len(raw) != 4 or raw[1] not in _EXPERT_DTYPES:
        raise DecodeError(f"invalid group field {field}: expected [bytes, 'u1'|'u2', layers, k]")
    layers, k = _check(raw[2], int, f"{field}.layers"), _check(raw[3], int, f"{field}.k")
    if layers <= 0 or k <= 0:
        raise DecodeError(f"invalid group field {field}: layers and k must be positive")
    flat = _array(raw[0], _EXPERT_DTYPES[raw[1]], field)
    if len(flat) % (layers * k):
        raise DecodeError(f"invalid group field {field}: {len(flat)} ids are not rows of {layers} x {k}")
    return flat.reshape(-1, layers, k)


def encode_group(group: Group) -> bytes:
    body = {
        "id": group.group_id,
        "prompt_id": group.prompt_id,
        "task": group.task.value,
        "stage": group.stage,
        "prompt_text": group.prompt_text,
        "prompt_tok": group.prompt_token_ids.astype(_I32, copy=False).tobytes(),
        "ref": group.reference.model_dump(mode="python"),
        "responses": [_response_to_wire(r) for r in group.responses],
        "created_at": group.created_at,
        "finished_at": group.finished_at,
        "scored_at": group.scored_at,
    }
    return msgpack.packb({"v": SCHEMA_VERSION, "g": body}, use_bin_type=True)


def _array(raw: Any, dtype: np.dtype, field: str) -> np.ndarray:
    if not isinstance(raw, bytes) or len(raw) % dtype.itemsize:
        raise DecodeError(f"field {field!r}: expected packed {dtype} bytes")
    return np.frombuffer(raw, dtype=dtype)


def _check(value: Any, types: type | tuple[type, ...], field: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DecodeError(f"invalid group field {field}: expected {types}, got bool")
    if not isinstance(value, types):
        raise DecodeError(f"invalid group field {field}: expected {types}, got {type(value).__name__}")
    return value


def _construct(cls: Any, fields: set[str], values: dict[str, Any]) -> Any:
    """What `model_construct` does for these models (no defaults to fill, no extras, no private
    attributes), without its per-call bookkeeping: decoding builds 17 objects per group, and
    this step was the largest cost of moving a group through the queue (bench/queue.py). The
    values are checked by hand before, and the round-trip property test covers the result."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(fields))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _enum(cls: Any, value: Any, field: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise DecodeError(f"invalid group field {field}: unknown value {value!r}") from None


def _response(r: dict, i: int, prompt_len: int) -> Response:
    f = f"responses.{i}"
    tok = _array(r["tok"], _I32, f"responses[{i}].tok")
    lp = _array(r["lp"], _F32, f"responses[{i}].lp")
    if len(tok) != len(lp):
        raise DecodeError(f"invalid group field {f}: {len(tok)} tokens but {len(lp)} log-probs")
    version = _check(r["ver"], int, f"{f}.policy_version")
    if version < 0:
        raise DecodeError(f"invalid group field {f}.policy_version: negative")
    segments = _token_versions(r.get("tv"), version, len(tok), f)
    verdict = r["verdict"]
    if verdict is not None:
        _check(verdict, list, f"{f}.verdict")
        verdict = Verdict.model_construct(
            _VERDICT_FIELDS, status=_enum(VerdictStatus, verdict[0], f"{f}.verdict.status"),
            detail=_check(verdict[1], str, f"{f}.verdict.detail"))
    routed = r.get("re")  # absent from v1 messages
    if routed is not None:
        routed = _routing(routed, f"{f}.routed_experts")
        try:
            check_routing_rows(len(routed), prompt_len, len(tok), i)
        except ValueError as exc:
            raise DecodeError(f"invalid group field {exc}") from None
    # Fields checked by hand above: pydantic validation of 16 responses costs more than
    # moving their 130 kB through Redis (see bench/queue.py).
    return _construct(Response, _RESPONSE_FIELDS, {
        "token_ids": tok, "logprobs": lp, "text": _check(r["text"], str, f"{f}.text"),
        "finish_reason": _enum(FinishReason, r["finish"], f"{f}.finish_reason"),
        "policy_version": version, "token_versions": segments,
        "reward": _check(r["reward"], (int, float), f"{f}.reward", optional=True), "verdict": verdict,
        "routed_experts": routed})


def _token_versions(raw: Any, version: int, num_tokens: int, f: str) -> list[tuple[int, int]]:
    if raw is None:  # a v1/v2 message: one version sampled every token
        return [(0, version)]
    _check(raw, list, f"{f}.token_versions")
    segments = []
    for seg in raw:
        if not isinstance(seg, list) or len(seg) != 2:
            raise DecodeError(f"invalid group field {f}.token_versions: expected [start, version] pairs")
        segments.append((_check(seg[0], int, f"{f}.token_versions"), _check(seg[1], int, f"{f}.token_versions")))
    try:
        check_token_versions(segments, num_tokens, version)
    except ValueError as exc:
        raise DecodeError(f"invalid group field {f}.{exc}") from None
    return segments


def decode_group(data: bytes) -> Group:
    try:
        msg = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not MessagePack: {type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict) or "v" not in msg or "g" not in msg:
        raise DecodeError("not a ringrl group message (missing 'v'/'g')")
    version = msg["v"]
    if not isinstance(version, int):
        raise DecodeError(f"schema version must be an int, got {version!r}")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"message uses group schema v{version}, this reader knows up to v{SCHEMA_VERSION}: "
            "upgrade ringrl on this side"
        )
    g = msg["g"]
    try:
        prompt = _array(g["prompt_tok"], _I32, "prompt_tok")
        responses = [_response(r, i, len(prompt))
                     for i, r in enumerate(_check(g["responses"], list, "responses"))]
        if not responses:
            raise DecodeError("invalid group field responses: empty")
        return Group.model_construct(
            _GROUP_FIELDS,
            group_id=_check(g["id"], str, "group_id"),
            prompt_id=_check(g["prompt_id"], str, "prompt_id"),
            task=_enum(TaskKind, g["task"], "task"),
            stage=_check(g["stage"], str, "stage"),
            prompt_text=_check(g["prompt_text"], str, "prompt_text"),
            prompt_token_ids=prompt,
            reference=_REFERENCE.validate_python(g["ref"]),
            responses=responses,
            created_at=_check(g["created_at"], (int, float), "created_at"),
            finished_at=_check(g["finished_at"], (int, float), "finished_at", optional=True),
            scored_at=_check(g["scored_at"], (int, float), "scored_at", optional=True),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise DecodeError(f"malformed group: {type(exc).__name__}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise DecodeError(f"invalid group field reference.{loc}: {first['msg']}") from None
