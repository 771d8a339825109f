"""MessagePack codec for groups. Arrays travel as raw little-endian bytes, not lists of numbers."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from pydantic import ValidationError

from protocol.schema import SCHEMA_VERSION, Group

_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")


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
        "reward": r.reward,
        "verdict": None if r.verdict is None else [r.verdict.status.value, r.verdict.detail],
    }


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
        responses = []
        for i, r in enumerate(g["responses"]):
            verdict = r["verdict"]
            responses.append(
                {
                    "token_ids": _array(r["tok"], _I32, f"responses[{i}].tok"),
                    "logprobs": _array(r["lp"], _F32, f"responses[{i}].lp"),
                    "text": r["text"],
                    "finish_reason": r["finish"],
                    "policy_version": r["ver"],
                    "reward": r["reward"],
                    "verdict": None
                    if verdict is None
                    else {"status": verdict[0], "detail": verdict[1]},
                }
            )
        return Group(
            group_id=g["id"],
            prompt_id=g["prompt_id"],
            task=g["task"],
            stage=g["stage"],
            prompt_text=g["prompt_text"],
            prompt_token_ids=_array(g["prompt_tok"], _I32, "prompt_tok"),
            reference=g["ref"],
            responses=responses,
            created_at=g["created_at"],
            finished_at=g["finished_at"],
            scored_at=g["scored_at"],
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, IndexError) as exc:
        raise DecodeError(f"malformed group: {type(exc).__name__}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise DecodeError(f"invalid group field {loc}: {first['msg']}") from None
