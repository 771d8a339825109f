"""Train/held-out assignment by content hash, so the two never share an item whatever the seeds."""

from __future__ import annotations

from recipe.tasks.items import content_key


def is_held_out(source: str, question: str, held_out_fraction: float) -> bool:
    bucket = int(content_key(source, question)[:8], 16) / 0xFFFFFFFF
    return bucket < held_out_fraction
