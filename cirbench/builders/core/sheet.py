"""The contact sheet every builder draws: a white PNG, a labelled header, one row per example query with
its thumbnails (reference, targets in green, hard negatives in red) and its text."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw, ImageFont, ImageOps

from cirbench.builders.core.images import png_bytes

TARGET = (30, 160, 60)
NEGATIVE = (200, 40, 40)
HEAD = 22
"""Height of the header row of labels."""


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an old Pillow without a scalable default font
        return ImageFont.load_default()


class Sheet:
    """A canvas of `rows` rows of `thumb`-pixel thumbnails below a header of (x, label) columns."""

    def __init__(
        self, width: int, rows: int, thumb: int, pad: int, labels: Sequence[tuple[int, str]]
    ) -> None:
        self.thumb, self.pad = thumb, pad
        self.image = Image.new("RGB", (width, HEAD + rows * (thumb + pad) + pad), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)
        self.small = font(11)
        header = font(12)
        for x, label in labels:
            self.draw.text((x, 4), label, fill=(0, 0, 0), font=header)

    def row_y(self, row: int) -> int:
        return HEAD + row * (self.thumb + self.pad)

    def put(self, data: bytes | None, x: int, y: int, border: tuple[int, int, int] | None,
            fit: Literal["stretch", "contain"] = "contain") -> None:
        """A thumbnail of the encoded image `data` (nothing when None), framed in `border`'s colour."""
        if data is None:
            return
        im = Image.open(io.BytesIO(data)).convert("RGB")
        size = (self.thumb, self.thumb)
        im = im.resize(size, Image.Resampling.BILINEAR) if fit == "stretch" else ImageOps.contain(im, size)
        self.image.paste(im, (x, y))
        if border is not None:
            self.draw.rectangle([x - 2, y - 2, x + im.width + 1, y + im.height + 1], outline=border, width=2)

    def text(self, x: int, y: int, tag: str, text: str, wrap: int) -> None:
        """`[tag]` in blue, then up to six wrapped lines of `text`."""
        for k, line in enumerate([f"[{tag}]"] + textwrap.wrap(text, wrap)[:6]):
            self.draw.text((x, y + 2 + k * 14), line, fill=(0, 0, 0) if k else (30, 60, 160), font=self.small)

    def png(self) -> bytes:
        return png_bytes(self.image, 6)


__all__ = ["NEGATIVE", "TARGET", "Sheet", "font"]
