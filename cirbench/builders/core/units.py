"""What a work unit's record is made of, for any pipeline: seeds derived from names (stable across runs,
shards and machines) and the rejection lines a unit logs."""

from __future__ import annotations

import hashlib
from typing import Any


def seed_for(seed: int, *parts: str) -> int:
    """A 31-bit seed from the build seed and names (an edit id): stable across runs, shards, machines."""
    h = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def rejection(
    stage: str, reason: str, *, edit: str | None = None, subcategory: str | None = None, **details: Any
) -> dict[str, Any]:
    """One line of the rejection log: which stage refused what, and why."""
    rec: dict[str, Any] = {"stage": stage, "reason": reason}
    if edit is not None:
        rec["edit"] = edit
    if subcategory is not None:
        rec["subcategory"] = subcategory
    rec.update({k: v for k, v in details.items() if v is not None})
    return rec


__all__ = ["rejection", "seed_for"]
