"""The scene graph: a few objects in a row of slots plus global attributes, from fixed vocabularies.

A scene is hashable and canonical (objects sorted by slot, one object per slot), so two scenes are the
same picture exactly when they compare equal: the gallery is de-duplicated on that, and ground truth is a
predicate over these values, never over pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink")
SIZES = ("small", "medium", "large")
TEXTURES = ("plain", "striped", "dotted", "checkered")
MATERIALS = ("matte", "metallic", "glass")
ACTIONS = ("still", "rolling", "falling", "spinning")
NUM_SLOTS = 5
SLOTS = tuple(range(NUM_SLOTS))

STYLES = ("photo", "cartoon", "pixel art", "sketch")
TIMES = ("day", "sunset", "night")
WEATHERS = ("clear", "rainy", "snowy", "foggy")
CAMERAS = ("front", "top-down", "close-up")

OBJECT_ATTRS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "texture": TEXTURES,
    "material": MATERIALS,
    "action": ACTIONS,
}
"""Attribute -> vocabulary, in canonical order (the order used whenever a set is turned into a list)."""
GLOBAL_ATTRS: dict[str, tuple[str, ...]] = {
    "style": STYLES,
    "time": TIMES,
    "weather": WEATHERS,
    "camera": CAMERAS,
}
VOCAB: dict[str, tuple[str, ...]] = {**OBJECT_ATTRS, **GLOBAL_ATTRS}
MAX_OBJECTS = 4
"""At most four objects in a reference, so an Addition always finds a free slot."""


@dataclass(frozen=True, order=True)
class Obj:
    """One object; `slot` (0 = far left .. 4 = far right) is its identity within a scene."""

    slot: int
    shape: str
    color: str
    size: str
    texture: str
    material: str
    action: str

    def get(self, attr: str) -> Any:
        return self.slot if attr == "slot" else getattr(self, attr)

    def with_attr(self, attr: str, value: str) -> Obj:
        """This object with one attribute changed (a typed dataclasses.replace)."""
        vals = {a: value if a == attr else getattr(self, a) for a in OBJECT_ATTRS}
        if attr not in vals:
            raise ValueError(f"unknown object attribute {attr!r}")
        return Obj(
            self.slot,
            vals["shape"],
            vals["color"],
            vals["size"],
            vals["texture"],
            vals["material"],
            vals["action"],
        )

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, **{a: getattr(self, a) for a in OBJECT_ATTRS}}


@dataclass(frozen=True)
class Scene:
    """A whole picture: global attributes plus objects sorted by slot (at most one per slot)."""

    style: str
    time: str
    weather: str
    camera: str
    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        slots = [o.slot for o in self.objects]
        if slots != sorted(set(slots)):
            raise ValueError(f"objects must have distinct slots in order, got {slots}")

    def get(self, attr: str) -> str:
        return str(getattr(self, attr))

    def at(self, slot: int) -> Obj | None:
        for o in self.objects:
            if o.slot == slot:
                return o
        return None

    @property
    def free_slots(self) -> tuple[int, ...]:
        used = {o.slot for o in self.objects}
        return tuple(s for s in SLOTS if s not in used)

    def to_json(self) -> dict[str, Any]:
        return {**{a: getattr(self, a) for a in GLOBAL_ATTRS}, "objects": [o.to_json() for o in self.objects]}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Scene:
        return Scene(
            style=d["style"],
            time=d["time"],
            weather=d["weather"],
            camera=d["camera"],
            objects=tuple(sorted(Obj(**o) for o in d["objects"])),
        )


def choice(rng: np.random.Generator, seq: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """A uniform (or weighted, p summing to 1) pick that returns the element itself.

    Faster than Generator.choice, which also would coerce the elements to a numpy dtype."""
    if p is None:
        return seq[int(rng.integers(len(seq)))]
    u, acc = rng.random(), 0.0
    for item, w in zip(seq, p, strict=True):
        acc += w
        if u < acc:
            return item
    return seq[-1]


def ordered(values: Sequence[str] | set[str], attr: str) -> list[str]:
    """A value set as a list in vocabulary order (never in set order, which varies between runs)."""
    vs = set(values)
    return [v for v in VOCAB[attr] if v in vs]


def random_object(rng: np.random.Generator, slot: int, **fixed: str) -> Obj:
    """A random object; most objects are plain, matte and still so that edits away from them stand out."""
    attrs = {
        "shape": choice(rng, SHAPES),
        "color": choice(rng, COLORS),
        "size": choice(rng, SIZES),
        "texture": choice(rng, TEXTURES, (0.4, 0.2, 0.2, 0.2)),
        "material": choice(rng, MATERIALS, (0.5, 0.25, 0.25)),
        "action": choice(rng, ACTIONS, (0.55, 0.15, 0.15, 0.15)),
    }
    attrs.update(fixed)
    return Obj(slot=slot, **attrs)


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A random reference scene with one to four objects in distinct slots."""
    n = n_objects if n_objects is not None else int(choice(rng, (1, 2, 3, 4), (0.25, 0.35, 0.3, 0.1)))
    slots = sorted(int(s) for s in rng.choice(NUM_SLOTS, size=n, replace=False))
    return Scene(
        style=choice(rng, STYLES, (0.4, 0.2, 0.2, 0.2)),
        time=choice(rng, TIMES, (0.5, 0.25, 0.25)),
        weather=choice(rng, WEATHERS, (0.4, 0.2, 0.2, 0.2)),
        camera=choice(rng, CAMERAS, (0.6, 0.2, 0.2)),
        objects=tuple(random_object(rng, s) for s in slots),
    )
