"""EDIR's taxonomy, the one definition every builder and task shares: subcategory -> main category."""

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
