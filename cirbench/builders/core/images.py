"""Image bytes every builder writes the same way: PNG with fixed options (the same pixels always give the
same bytes, so rebuilt and merged datasets are byte-identical), decoding, and portable file ids."""

from __future__ import annotations

import io
import re

from PIL import Image


def png_bytes(img: Image.Image, level: int = 6) -> bytes:
    """PNG with fixed options (no timestamps): the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def safe_id(raw: str) -> str:
    """A portable id: letters, digits, '.', '_' and '-' only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._") or "img"
    return s


__all__ = ["decode", "png_bytes", "safe_id"]
