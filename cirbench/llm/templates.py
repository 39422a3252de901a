"""The offline backend: edit instructions, CIR queries and captions from templates, with no model at all.

Used when `lmm.backend: template` (the default in tests and on machines without a model). Each template has
three phrasings of one edit: the imperative instruction the editor gets, the relative query a user would type,
and a caption fragment of the edited image (for the embedding direction check). Slot values are drawn from
fixed lists with a seeded generator, so a template build is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cirbench.tasks.taxonomy import SUBCATEGORIES, TAXONOMY  # noqa: E402  (re-exported)

DEFINITIONS: dict[str, str] = {
    "Color": "change the colour of one visible object",
    "Material": "change what one object is made of (wood, metal, glass, stone, ...)",
    "Shape": "change the shape of one object",
    "Texture": "change the surface pattern or texture of one object",
    "Addition": "add one new object to the scene",
    "Remove": "remove one visible object",
    "Replace": "replace one object with a different kind of object",
    "Count": "change how many there are of one kind of object",
    "Spatial": "move one object to another place, or change how objects are arranged",
    "Action": "change what a person or animal is doing, or its pose",
    "Viewpoint": "show the same scene from another camera angle or distance",
    "Style": "render the whole image in another artistic style",
    "Time": "change the time of day or season",
    "Weather": "change the weather",
    "Complex": "two simple edits of different main categories at once",
}

VALUES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
    "material": ("wood", "metal", "glass", "marble", "stone", "plastic"),
    "shape": ("round", "square", "triangular", "star-shaped", "heart-shaped"),
    "texture": ("striped", "polka-dotted", "checkered", "furry", "spotted"),
    "object": ("a dog", "a cat", "a bicycle", "a red ball", "a potted plant", "a bird", "a lamp"),
    "count": ("two", "three", "four"),
    "place": ("on the left", "on the right", "at the top", "at the bottom"),
    "action": ("running", "jumping", "sitting", "sleeping", "turning around"),
    "view": ("from above", "from a low angle", "as a close-up", "from far away", "from the side"),
    "style": ("a watercolor painting", "a pencil sketch", "a cartoon", "pixel art", "an oil painting"),
    "time": ("at night", "at sunset", "at dawn", "in winter", "in autumn"),
    "weather": ("in the rain", "in the snow", "in thick fog", "under a clear blue sky", "in a storm"),
}


@dataclass(frozen=True)
class Template:
    instruction: str
    query: str
    caption: str


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "Color": (
        Template(
            "Change the color of the main object to {color}.",
            "Same picture, but the main object is {color}.",
            "a {color} main object",
        ),
    ),
    "Material": (
        Template(
            "Make the main object out of {material}.",
            "Same scene, but the main object is made of {material}.",
            "a main object made of {material}",
        ),
    ),
    "Shape": (
        Template(
            "Make the main object {shape}.",
            "The same, but with a {shape} main object.",
            "a {shape} main object",
        ),
    ),
    "Texture": (
        Template(
            "Give the main object a {texture} texture.",
            "Same image, but the main object is {texture}.",
            "a {texture} main object",
        ),
    ),
    "Addition": (
        Template("Add {object} to the scene.", "Same scene with {object} added.", "a scene with {object}"),
    ),
    "Remove": (
        Template(
            "Remove the main object from the image.",
            "The same scene without the main object.",
            "an empty scene",
        ),
    ),
    "Replace": (
        Template(
            "Replace the main object with {object}.",
            "Same setting, but {object} instead of the main object.",
            "a scene with {object}",
        ),
    ),
    "Count": (
        Template(
            "Show {count} copies of the main object.",
            "Same, but with {count} of the main object.",
            "{count} main objects",
        ),
    ),
    "Spatial": (
        Template(
            "Move the main object {place}.",
            "Same picture with the main object {place}.",
            "a main object {place}",
        ),
    ),
    "Action": (
        Template("Make the subject {action}.", "The same subject, but {action}.", "a subject {action}"),
    ),
    "Viewpoint": (Template("Show the scene {view}.", "The same scene seen {view}.", "a scene seen {view}"),),
    "Style": (Template("Turn the image into {style}.", "The same image as {style}.", "{style}"),),
    "Time": (Template("Change the scene to {time}.", "Same place, but {time}.", "a scene {time}"),),
    "Weather": (
        Template(
            "Change the weather so the scene is {weather}.", "The same view {weather}.", "a scene {weather}"
        ),
    ),
}


@dataclass(frozen=True)
class TemplateEdit:
    """One realised edit: what the editor is told, the query text, the edited image's caption, the parts."""

    subcategory: str
    instruction: str
    query: str
    target_caption: str
    components: tuple[str, ...] = ()


def _realise(sub: str, rng: np.random.Generator) -> TemplateEdit:
    options = TEMPLATES[sub]
    t = options[int(rng.integers(len(options)))]
    slots = {
        name: VALUES[name][int(rng.integers(len(VALUES[name])))]
        for name in VALUES
        if "{" + name + "}" in t.instruction + t.query + t.caption
    }
    return TemplateEdit(
        sub, t.instruction.format(**slots), t.query.format(**slots), t.caption.format(**slots)
    )


def template_edit(subcategory: str, rng: np.random.Generator, *, components: int = 2) -> TemplateEdit:
    """A template edit of one subcategory; Complex combines `components` edits of distinct categories."""
    if subcategory != "Complex":
        return _realise(subcategory, rng)
    cats = [c for c in dict.fromkeys(TAXONOMY.values()) if c != "Complex"]
    picked = [cats[i] for i in sorted(rng.choice(len(cats), size=min(components, len(cats)), replace=False))]
    parts = []
    for cat in picked:
        subs = [s for s, c in TAXONOMY.items() if c == cat]
        parts.append(_realise(subs[int(rng.integers(len(subs)))], rng))
    instruction = " ".join(p.instruction for p in parts)
    query = (
        parts[0].query.rstrip(".")
        + "; also "
        + "; also ".join(p.query[0].lower() + p.query[1:].rstrip(".") for p in parts[1:])
        + "."
    )
    return TemplateEdit(
        "Complex",
        instruction,
        query,
        ", ".join(p.target_caption for p in parts),
        tuple(p.instruction for p in parts),
    )


def template_fingerprint() -> dict[str, Any]:
    """Recorded as the 'model' of a template build: the templates themselves are the model."""
    return {
        "backend": "template",
        "templates": {k: [t.__dict__ for t in v] for k, v in TEMPLATES.items()},
        "values": {k: list(v) for k, v in VALUES.items()},
    }


def check_subcategories(subs: Sequence[str]) -> list[str]:
    bad = [s for s in subs if s not in TAXONOMY]
    if bad:
        raise ValueError(f"unknown subcategories {bad}; EDIR's are {list(SUBCATEGORIES)}")
    return list(subs)
