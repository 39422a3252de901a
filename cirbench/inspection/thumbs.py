"""Small embedded JPEG thumbnails under a size budget, each image encoded once however often it is shown.

The page must open fast with 1,000 queries, so the thumbnails' total size is planned before encoding: a few
images are encoded at each (size, quality) setting, largest first, and the first setting whose estimate
fits the budget is used for all. When even the smallest does not fit, the caller shows fewer queries.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from cirbench.core.types import Item
from cirbench.templating import data_uri

SETTINGS = ((128, 80), (112, 75), (96, 70), (80, 65), (64, 60), (48, 50))
"""(longest side in px, JPEG quality), best first."""
PLAN_SAMPLE = 24


@dataclass
class Thumbs:
    uris: dict[str, str] = field(default_factory=dict)
    """image key ("t0", "t1", ...) -> data: URI."""
    keys: dict[str, str] = field(default_factory=dict)
    """image id -> key; an id without a key has no thumbnail (see `missing`)."""
    missing: dict[str, str] = field(default_factory=dict)
    """image id -> why it could not be shown (file missing, not decodable, a video)."""
    px: int = 0
    quality: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(len(u) for u in self.uris.values())


def thumbnail(item: Item, px: int, quality: int) -> bytes:
    """The item's image as a JPEG of at most px × px (aspect kept); OSError/ValueError if unreadable."""
    if item.image is None:
        raise ValueError("no image")
    src = io.BytesIO(item.image) if isinstance(item.image, bytes) else item.image
    with Image.open(src) as img:
        img.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, much faster for large photos
        rgb = img.convert("RGB")
    rgb.thumbnail((px, px))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _encode(items: Mapping[str, Item], ids: Sequence[str], px: int, quality: int
            ) -> dict[str, bytes | str]:
    """id -> JPEG bytes, or the reason it failed."""
    def one(iid: str) -> bytes | str:
        item = items.get(iid)
        if item is None:
            return "not in the task's corpus or references"
        try:
            return thumbnail(item, px, quality)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return f"cannot be shown: {e}"

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(ids, pool.map(one, ids)))


def plan(items: Mapping[str, Item], ids: Sequence[str], budget: int) -> tuple[int, int, float]:
    """(px, quality, estimated bytes per image as embedded) of the best setting that fits `budget`
    for all `ids`; the smallest setting when none does."""
    probe = list(ids[:: max(1, len(ids) // PLAN_SAMPLE)])[:PLAN_SAMPLE]
    per = 0.0
    for px, quality in SETTINGS:
        sizes = [len(v) for v in _encode(items, probe, px, quality).values() if isinstance(v, bytes)]
        per = 4 / 3 * (sum(sizes) / len(sizes)) + 30 if sizes else 0.0  # base64 and the data: prefix
        if per * len(ids) <= budget:
            return px, quality, per
    return SETTINGS[-1][0], SETTINGS[-1][1], per


def make_thumbs(items: Mapping[str, Item], ids: Sequence[str], px: int, quality: int) -> Thumbs:
    out = Thumbs(px=px, quality=quality)
    for iid, data in _encode(items, list(dict.fromkeys(ids)), px, quality).items():
        if isinstance(data, bytes):
            key = f"t{len(out.uris)}"
            out.keys[iid] = key
            out.uris[key] = data_uri(data, "image/jpeg")
        else:
            out.missing[iid] = data
    return out
