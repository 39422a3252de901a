"""One colour per model, the same on every chart and page cirbench draws.

A model's colour comes from a hash of its name, so `cirbench-fusion` is the same blue in the demo's charts,
`eval --plots`, the leaderboard page and the inspect page. Two names that hash to the same slot within one
picture are told apart by moving the later one (in sorted order) to the next free slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#e7969c", "#637939", "#ad494a", "#6b6ecf", "#8c6d31", "#7b4173", "#3182bd",
    "#31a354", "#fd8d3c",
)
"""matplotlib's tab10, then ten darker / lighter tones that stay apart from it (tab20b/tab20c picks)."""


def _slot(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "big") % len(PALETTE)


def model_colours(names: Iterable[str]) -> dict[str, str]:
    """name -> hex colour; stable across pictures, distinct within one (up to len(PALETTE) names)."""
    out: dict[str, str] = {}
    taken: set[int] = set()
    for name in sorted(set(names)):
        slot = _slot(name)
        for step in range(len(PALETTE)):
            if (slot + step) % len(PALETTE) not in taken:
                slot = (slot + step) % len(PALETTE)
                break
        taken.add(slot)
        if len(taken) == len(PALETTE):
            taken.clear()  # more names than colours: start a second round
        out[name] = PALETTE[slot]
    return out
