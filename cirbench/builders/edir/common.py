"""Sizing the editor's input: the shapes a diffusers pipeline accepts (seeds, rejections, PNG bytes and
the retry signal every pipeline shares live in cirbench.builders.core)."""

from __future__ import annotations

from PIL import Image

__all__ = ["fit_size", "prepare"]


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
