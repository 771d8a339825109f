"""The record that names a published weight version."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field


class WeightVersion(BaseModel):
    version: int = Field(ge=0, description="Monotonic policy version; 0 is the initial weights.")
    checksum: str = Field(description="sha256 over tensor names, dtypes, shapes and bytes.")
    url: str | None = Field(default=None, description="Where the safetensors can be pulled.")
    num_bytes: int = Field(default=0, ge=0, description="Total tensor bytes.")
    published_at: float = Field(default_factory=time.time)

    def to_redis(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in self.model_dump().items()}

    @classmethod
    def from_redis(cls, raw: dict[bytes | str, bytes | str]) -> "WeightVersion":
        d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
        d["url"] = d.get("url") or None
        return cls.model_validate(d)


def checksum_tensors(named: Iterable[tuple[str, Any]]) -> str:
    """Checksum (name, torch tensor or ndarray) pairs in the order given.

    Both ends must iterate in the same (sorted) order. Names, dtypes, shapes and raw bytes are
    all covered, so a dtype change or a transposed copy is caught.
    """
    h = hashlib.sha256()
    for name, t in named:
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if isinstance(t, np.ndarray):
            h.update(np.ascontiguousarray(t).reshape(-1).view(np.uint8))
        else:  # torch.Tensor; bf16 has no numpy dtype, so hash its bytes through uint8
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch_uint8()).numpy())
    return h.hexdigest()


def torch_uint8() -> Any:
    import torch  # imported lazily: protocol/ readers that never see tensors need no torch

    return torch.uint8
