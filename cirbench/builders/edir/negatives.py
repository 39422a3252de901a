"""Stage 6: hard negatives and distractors.

A query's hard negatives are the images a model confuses with its target because they share almost everything:
- siblings: the other accepted edits of the same source (same scene, a different change);
- partial edits: for a Complex edit, the source edited with only one of its components (half the change).
All of them are in the gallery, so they are negatives in the ranking, and listed per query so that analyses
can ask how often a model prefers one. Distractors are pool images that were never edited: they make the
gallery larger without being near the query (EDIR's paper gallery had 178k images for 5k queries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def hard_negatives(accepted: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """{edit id: hard negative corpus ids} for the accepted edits of one source (partials first)."""
    cap = int(cfg.get("max_per_query", 10))
    out: dict[str, list[str]] = {}
    for e in accepted:
        negs: list[str] = []
        if cfg.get("partial_edits", True):
            negs += [p["id"] for p in e.get("partials", ()) if p.get("blob")]
        if cfg.get("siblings", True):
            negs += [s["id"] for s in accepted if s["id"] != e["id"]]
        out[e["id"]] = list(dict.fromkeys(negs))[:cap]
    return out


def gallery_ids(accepted: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> list[str]:
    """The corpus images one source contributes: its accepted edits, then their partial edits."""
    ids = [e["id"] for e in accepted]
    if cfg.get("partial_edits", True):
        ids += [p["id"] for e in accepted for p in e.get("partials", ()) if p.get("blob")]
    return ids
