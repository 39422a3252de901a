"""FashionIQ's categories and its caption-joining rules: shared by the FashionIQ loader and SoFT's refined
FashionIQ (`cirbench.tasks.soft`), so that neither task module imports the other.

A FashionIQ query has two relative captions; papers join them differently, and the rule is part of the
protocol (`Protocol.caption_join`, one protocol variant per rule).
"""

from __future__ import annotations

CATEGORIES = ("dress", "shirt", "toptee")
JOINS = ("both-orders", "c1-and-c2", "c2-and-c1")
STRIP = ".?, "
"""SEARLE and CIReVL strip these characters from both ends of each caption: `caption.strip('.?, ')`."""

JOIN_NOTES = {
    "both-orders": "SEARLE/LinCIR (src/validate.py::fiq_generate_val_predictions): each caption "
                   "stripped of '.?, ' at both ends; text 'c1 and c2', alt_items ['c2 and c1']; the two "
                   "L2-normalised vectors are averaged and re-normalised",
    "c1-and-c2": "CIReVL (src/utils.py): each caption stripped of '.?, '; text 'c1 and c2', one order",
    "c2-and-c1": "Pic2Word (src/data.py::FashionIQ): 'c2 and c1', the second caption first, not stripped",
}

def join_captions(c1: str, c2: str, rule: str) -> tuple[str, tuple[str, ...]]:
    """(main text, alternative texts) for a join rule; alternatives are averaged with the main one."""
    if rule == "both-orders":
        a, b = c1.strip(STRIP), c2.strip(STRIP)
        return f"{a} and {b}", (f"{b} and {a}",)
    if rule == "c1-and-c2":
        return f"{c1.strip(STRIP)} and {c2.strip(STRIP)}", ()
    if rule == "c2-and-c1":
        return f"{c2} and {c1}", ()
    raise ValueError(f"unknown caption join {rule!r}; choose one of {JOINS}")
