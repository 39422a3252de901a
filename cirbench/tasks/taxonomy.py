"""What builders and tasks share, defined once and importing nothing: EDIR's taxonomy (subcategory -> main
category) and the synthetic benchmark's metrics (its builder writes them, its task advertises them)."""

from __future__ import annotations

TAXONOMY: dict[str, str] = {
    "Color": "Attribute",
    "Material": "Attribute",
    "Shape": "Attribute",
    "Texture": "Attribute",
    "Addition": "Object",
    "Remove": "Object",
    "Replace": "Object",
    "Count": "Object",
    "Spatial": "Relationship",
    "Action": "Relationship",
    "Viewpoint": "Relationship",
    "Style": "Global Environment",
    "Time": "Global Environment",
    "Weather": "Global Environment",
    "Complex": "Complex",
}
"""EDIR's 15 subcategories -> 5 main categories."""

SUBCATEGORIES = tuple(TAXONOMY)

SYNTHETIC_METRICS = ("R@1", "R@5", "R@10", "R@50", "mAP@5", "mAP@10", "mAP@50")
"""The protocol a synthetic build writes (cirbench.builders.synthetic.build.PROTOCOL) and its task lists."""
