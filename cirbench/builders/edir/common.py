"""Small things every EDIR stage shares: derived seeds, rejection records, PNG encoding, the retry signal."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image

from cirbench.builders.edir.workdir import Deferred

__all__ = ["Deferred", "decode", "fit_size", "png_bytes", "prepare", "rejection", "seed_for"]


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


def png_bytes(img: Image.Image, level: int = 6) -> bytes:
    """PNG with fixed options (no timestamps): the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def fit_size(w: int, h: int, size: int, multiple: int) -> tuple[int, int]:
    """Scale so the longer side is `size`, then round both sides down to a multiple the editor needs."""
    s = size / max(w, h)
    return (
        max(multiple, int(round(w * s)) // multiple * multiple),
        max(multiple, int(round(h * s)) // multiple * multiple),
    )


def prepare(img: Image.Image, size: int, multiple: int) -> Image.Image:
    """The editor's input: the source resized (aspect kept) to a shape the pipeline accepts."""
    w, h = fit_size(*img.size, size, multiple)
    return img if (w, h) == img.size else img.resize((w, h), Image.Resampling.LANCZOS)
