"""Edits in EDIR's taxonomy: one generator per subcategory, each returning an atomic op and its wording.

A generator looks at a reference scene and returns a Clause (one atomic operation, see predicate.py, plus
its text) or None when the scene does not suit it (e.g. Remove needs two objects). Each generator mixes
exact wordings ("make the circle blue": one possible target) with underspecified ones ("give the circle a
warm colour", "no longer striped", "move it further left": several), which is where multi-target comes from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirbench.builders.synthetic import texts as T
from cirbench.builders.synthetic.predicate import Op
from cirbench.builders.synthetic.scene import (
    ACTIONS,
    CAMERAS,
    COLORS,
    MATERIALS,
    MAX_OBJECTS,
    NUM_SLOTS,
    OBJECT_ATTRS,
    SHAPES,
    SLOTS,
    STYLES,
    TEXTURES,
    TIMES,
    WEATHERS,
    Obj,
    Scene,
    choice,
    ordered,
)
from cirbench.tasks.taxonomy import SUBCATEGORIES, TAXONOMY  # noqa: E402  (re-exported)

SIMPLE = tuple(s for s in SUBCATEGORIES if s != "Complex")
STRUCTURAL = frozenset({"Addition", "Remove", "Replace", "Count", "Spatial"})
"""Edits that change which objects exist or where: a Complex edit holds at most one of them."""
WARM = ("red", "orange", "yellow")
COOL = ("green", "blue", "purple")
ANGULAR = ("square", "triangle", "star", "hexagon")


@dataclass
class Clause:
    """One atomic edit with its wording."""

    subcategory: str
    op: Op
    text: str
    template: str
    touched: frozenset[int] = frozenset()
    """Reference slots the clause is about (a Complex edit keeps them disjoint)."""
    subject: str = ""
    """How refinement details name what this clause changes ('the red circle', 'the new star')."""


@dataclass
class Edit:
    subcategory: str
    clauses: list[Clause]
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return TAXONOMY[self.subcategory]

    @property
    def ops(self) -> list[Op]:
        return [c.op for c in self.clauses]

    def to_json(self, ops: Sequence[Op] | None = None) -> dict[str, Any]:
        return {
            "category": self.category,
            "subcategory": self.subcategory,
            "ops": [copy.deepcopy(o) for o in (ops if ops is not None else self.ops)],
            "clauses": [
                {"subcategory": c.subcategory, "text": c.text, "template": c.template} for c in self.clauses
            ],
        }


def _pick_obj(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Obj | None:
    objs = [o for o in ref.objects if o.slot not in avoid]
    return choice(rng, objs) if objs else None


def _variant(rng: np.random.Generator, options: Sequence[tuple[str, float]]) -> str:
    names = [n for n, _ in options]
    w = np.array([p for _, p in options], float)
    return str(choice(rng, names, tuple(w / w.sum())))


# ----------------------------------------------------------------------------------------------- Attribute


def gen_color(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    desc = T.describe(ref, o.slot, rng, edited="color")
    others = [c for c in COLORS if c != o.color]
    v = _variant(rng, (("exact", 0.45), ("negation", 0.2), ("different", 0.15), ("group", 0.2)))
    if v == "exact":
        val = choice(rng, others)
        values, (text, tid) = [val], T.phrase("Color/exact", rng, obj=desc, value=val)
    elif v == "group":
        name, group = choice(rng, (("warm", WARM), ("cool", COOL)))
        values = [c for c in group if c != o.color]
        key = "Color/group-other" if o.color in group else "Color/group"
        text, tid = T.phrase(key, rng, obj=desc, group=name)
    else:
        values = others
        text, tid = T.phrase(f"Color/{v}", rng, obj=desc, cur=o.color)
    op = {"op": "set", "attr": "color", "obj": o.slot, "values": ordered(values, "color")}
    return Clause("Color", op, text, tid, frozenset([o.slot]), f"the {desc}")


def gen_material(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    desc = T.describe(ref, o.slot, rng, edited="material")
    others = [m for m in MATERIALS if m != o.material]
    opts = [("exact", 0.5), ("negation", 0.25)] + ([("shiny", 0.25)] if o.material == "matte" else [])
    v = _variant(rng, opts)
    if v == "exact":
        val = choice(rng, others)
        values = [val]
        text, tid = T.phrase(f"Material/{val}", rng, obj=desc, cur=T.MATERIAL_ADJ[o.material])
    else:
        values = ["metallic", "glass"] if v == "shiny" else others
        text, tid = T.phrase(f"Material/{v}", rng, obj=desc, cur=T.MATERIAL_ADJ[o.material])
    op = {"op": "set", "attr": "material", "obj": o.slot, "values": ordered(values, "material")}
    return Clause("Material", op, text, tid, frozenset([o.slot]), f"the {desc}")


def gen_shape(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    desc = T.describe(ref, o.slot, rng)
    others = [s for s in SHAPES if s != o.shape]
    opts = [("exact", 0.5), ("negation", 0.3)] + ([("angular", 0.2)] if o.shape not in ANGULAR else [])
    v = _variant(rng, opts)
    if v == "exact":
        val = choice(rng, others)
        values, (text, tid) = [val], T.phrase("Shape/exact", rng, obj=desc, value=T.article(val))
    else:
        values = list(ANGULAR) if v == "angular" else others
        text, tid = T.phrase(f"Shape/{v}", rng, obj=desc, cur=T.article(o.shape))
    op = {"op": "set", "attr": "shape", "obj": o.slot, "values": ordered(values, "shape")}
    return Clause("Shape", op, text, tid, frozenset([o.slot]), f"the {desc}")


def gen_texture(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    desc = T.describe(ref, o.slot, rng, edited="texture")
    others = [t for t in TEXTURES if t != o.texture]
    if o.texture == "plain":
        v = _variant(rng, (("exact", 0.5), ("any", 0.5)))
    else:
        v = _variant(rng, (("exact", 0.45), ("negation", 0.35), ("other", 0.2)))
    if v == "exact":
        val = choice(rng, others)
        values, (text, tid) = [val], T.phrase(f"Texture/{val}", rng, obj=desc)
    else:
        values = {
            "any": [t for t in TEXTURES if t != "plain"],
            "negation": others,
            "other": [t for t in others if t != "plain"],
        }[v]
        text, tid = T.phrase(f"Texture/{v}", rng, obj=desc, cur=T.TEXTURE_ADJ[o.texture])
    op = {"op": "set", "attr": "texture", "obj": o.slot, "values": ordered(values, "texture")}
    return Clause("Texture", op, text, tid, frozenset([o.slot]), f"the {desc}")


# ----------------------------------------------------------------------------------------------- Object


def _where(
    ref: Scene, rng: np.random.Generator, avoid: frozenset[int]
) -> tuple[str, list[int], frozenset[int]]:
    """An optional place for a new object: (phrase, allowed slots, referenced objects)."""
    free = set(ref.free_slots)
    opts: list[tuple[str, list[int], frozenset[int]]] = []
    if 0 in free:
        opts.append(("at the far left", [0], frozenset()))
    if 4 in free:
        opts.append(("at the far right", [4], frozenset()))
    if free & {0, 1}:
        opts.append(("on the left side", [0, 1], frozenset()))
    if free & {3, 4}:
        opts.append(("on the right side", [3, 4], frozenset()))
    for o in ref.objects:
        if o.slot in avoid:
            continue
        left, right = list(range(o.slot)), list(range(o.slot + 1, NUM_SLOTS))
        near = [s for s in (o.slot - 1, o.slot + 1) if 0 <= s < NUM_SLOTS]
        for word, slots in (("to the left of", left), ("to the right of", right), ("next to", near)):
            if free & set(slots):
                opts.append((f"{word} the {T.describe(ref, o.slot, rng)}", slots, frozenset([o.slot])))
    return choice(rng, opts) if opts else ("", list(SLOTS), frozenset())


def _random_spec(rng: np.random.Generator, n_extra: int) -> dict[str, list[str]]:
    spec: dict[str, list[str]] = {}
    for a in rng.permutation(["color", "texture", "material", "size"])[:n_extra]:
        spec[str(a)] = [choice(rng, OBJECT_ATTRS[str(a)])]
    return spec


def gen_addition(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    absent = [s for s in SHAPES if all(o.shape != s for o in ref.objects)]
    if len(ref.objects) > MAX_OBJECTS or not ref.free_slots or not absent:
        return None
    shape = choice(rng, absent)
    n_extra = int(choice(rng, (0, 1, 2), (0.4, 0.4, 0.2)))
    spec: dict[str, Any] = {"shape": [shape], **_random_spec(rng, n_extra)}
    touched: frozenset[int] = frozenset()
    where, slots = "", list(SLOTS)
    if rng.random() < 0.35:
        where, slots, touched = _where(ref, rng, avoid)
    if slots != list(SLOTS):
        spec["slots"] = slots
    np_ = T.article(T.noun_phrase({a: v[0] for a, v in spec.items() if a not in ("shape", "slots")}, shape))
    text, tid = T.phrase("Addition/add", rng, np=np_, where=f" {where}" if where else "")
    return Clause("Addition", {"op": "add", "objects": [spec]}, text, tid, touched, f"the new {shape}")


def gen_remove(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    objs = [o for o in ref.objects if o.slot not in avoid]
    if len(ref.objects) < 2 or not objs:
        return None
    groups: list[tuple[str, list[int]]] = []
    for attr, name in (("shape", lambda v: T.plural(v)), ("color", lambda v: f"{v} objects")):
        for val in OBJECT_ATTRS[attr]:
            members = [o.slot for o in objs if o.get(attr) == val]
            if len(members) >= 2:
                groups.append((name(val), members))
    opts = [("exact", 0.5), ("all-but", 0.2)] + ([("one-of", 0.3)] if groups else [])
    if len(objs) < len(ref.objects):
        opts = [("exact", 0.6)] + ([("one-of", 0.4)] if groups else [])
    v = _variant(rng, opts)
    if v == "exact":
        o = choice(rng, objs)
        desc = T.describe(ref, o.slot, rng)
        op = {"op": "remove", "objs": [o.slot], "count": 1}
        text, tid = T.phrase("Remove/exact", rng, obj=desc)
        return Clause("Remove", op, text, tid, frozenset([o.slot]), f"the {desc}")
    if v == "one-of":
        name, members = choice(rng, groups)
        text, tid = T.phrase("Remove/one-of", rng, group=name)
        op = {"op": "remove", "objs": members, "count": 1}
        return Clause("Remove", op, text, tid, frozenset(members), "the one to remove")
    keep = choice(rng, objs)
    gone = [o.slot for o in ref.objects if o.slot != keep.slot]
    text, tid = T.phrase("Remove/all-but", rng, obj=T.describe(ref, keep.slot, rng))
    op = {"op": "remove", "objs": gone, "count": len(gone)}
    return Clause("Remove", op, text, tid, frozenset(o.slot for o in ref.objects), "")


def gen_replace(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    shape = choice(rng, [s for s in SHAPES if s != o.shape])
    new: dict[str, list[str]] = {"shape": [shape]}
    if rng.random() < 0.5:
        new["color"] = [choice(rng, COLORS)]
    np_ = T.article(T.noun_phrase({"color": new["color"][0]} if "color" in new else {}, shape))
    text, tid = T.phrase("Replace/replace", rng, obj=T.describe(ref, o.slot, rng), np=np_)
    op = {"op": "replace", "obj": o.slot, "new": new}
    return Clause("Replace", op, text, tid, frozenset([o.slot]), f"the replacement {shape}")


def gen_count(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    classes = [
        s
        for s in SHAPES
        if any(o.shape == s for o in ref.objects)
        and all(o.slot not in avoid for o in ref.objects if o.shape == s)
    ]
    if not classes:
        return None
    shape = choice(rng, classes)
    members = [o.slot for o in ref.objects if o.shape == shape]
    c, free = len(members), len(ref.free_slots)
    opts: list[tuple[str, float]] = []
    if free >= 1:
        opts.append(("one-more", 0.3))
    if free >= 2:
        opts.append(("two-more", 0.1))
    if c in (1, 2) and free >= c:
        opts.append(("double", 0.1))
    if c >= 2:
        opts += [("one-fewer", 0.2), ("exactly", 0.2)]
    elif free >= 1:
        opts.append(("exactly", 0.2))
    if c >= 3:
        opts.append(("keep-one", 0.1))
    if not opts:
        return None
    v = _variant(rng, opts)
    if v == "exactly":
        ns = [n for n in range(1, c + min(free, 2) + 1) if n != c]
        target = int(choice(rng, ns))
    else:
        target = {"one-more": c + 1, "two-more": c + 2, "double": 2 * c, "one-fewer": c - 1, "keep-one": 1}[v]
    kw = {
        "shape": shape,
        "shapes": T.plural(shape),
        "n": T.NUMBER[target],
        "shapes_n": shape if target == 1 else T.plural(shape),
    }
    text, tid = T.phrase(f"Count/{v}", rng, **kw)
    if target > c:
        op: Op = {"op": "add", "objects": [{"shape": [shape]} for _ in range(target - c)]}
        subject = f"the new {shape}"
    else:
        op = {"op": "remove", "objs": members, "count": c - target}
        subject = f"the {shape} to remove"
    return Clause("Count", op, text, tid, frozenset(members), subject)


# ----------------------------------------------------------------------------------------------- Relationship


def gen_spatial(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    free = set(ref.free_slots)
    desc = T.describe(ref, o.slot, rng)
    opts: list[tuple[str, dict[str, Any]]] = []
    for d, slots in (("left", list(range(o.slot))), ("right", list(range(o.slot + 1, NUM_SLOTS)))):
        if free & set(slots):
            opts.append(("further", {"dir": d, "slots": slots}))
        step = o.slot - 1 if d == "left" else o.slot + 1
        if step in free:
            opts.append(("one-step", {"dir": d, "slots": [step]}))
    for t, where in ((0, "to the far left"), (2, "to the middle"), (4, "to the far right")):
        if t in free:
            opts.append(("absolute", {"where": where, "slots": [t]}))
    for o2 in ref.objects:
        if o2 is o or o2.slot in avoid:
            continue
        d2 = T.describe(ref, o2.slot, rng)
        side = list(range(o2.slot)) if o.slot > o2.slot else list(range(o2.slot + 1, NUM_SLOTS))
        if free & set(side):
            opts.append(
                (
                    "relative",
                    {
                        "dir": "left" if o.slot > o2.slot else "right",
                        "slots": side,
                        "obj2": d2,
                        "o2": o2.slot,
                    },
                )
            )
        near = [s for s in (o2.slot - 1, o2.slot + 1) if 0 <= s < NUM_SLOTS]
        if abs(o.slot - o2.slot) > 1 and free & set(near):
            opts.append(("next-to", {"slots": near, "obj2": d2, "o2": o2.slot}))
        opts.append(("swap", {"obj2": d2, "o2": o2.slot}))
    if not opts:
        return None
    kinds = sorted({k for k, _ in opts})
    kind = choice(rng, kinds)
    v, kw = choice(rng, [x for x in opts if x[0] == kind])
    words = {k: kw[k] for k in ("dir", "where", "obj2") if k in kw}
    text, tid = T.phrase(f"Spatial/{v}", rng, obj=desc, **words)
    touched = frozenset([o.slot] + ([kw["o2"]] if "o2" in kw else []))
    op = (
        {"op": "swap", "objs": [o.slot, kw["o2"]]}
        if v == "swap"
        else {"op": "move", "obj": o.slot, "slots": kw["slots"]}
    )
    return Clause("Spatial", op, text, tid, touched, f"the {desc}")


def gen_action(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    o = _pick_obj(ref, rng, avoid)
    if o is None:
        return None
    desc = T.describe(ref, o.slot, rng, edited="action")
    others = [a for a in ACTIONS if a != o.action]
    v = _variant(rng, (("exact", 0.55), ("moving" if o.action == "still" else "negation", 0.45)))
    if v == "exact":
        val = choice(rng, others)
        values, (text, tid) = [val], T.phrase(f"Action/{val}", rng, obj=desc)
    else:
        values = others
        text, tid = T.phrase(f"Action/{v}", rng, obj=desc, cur=T.ACTION_ING[o.action])
    op = {"op": "set", "attr": "action", "obj": o.slot, "values": ordered(values, "action")}
    return Clause("Action", op, text, tid, frozenset([o.slot]), f"the {desc}")


def _global_clause(
    sub: str, attr: str, values: Sequence[str], key: str, rng: np.random.Generator, **kw: str
) -> Clause:
    text, tid = T.phrase(key, rng, **kw)
    return Clause(sub, {"op": "set", "attr": attr, "values": ordered(values, attr)}, text, tid)


def gen_viewpoint(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    cur = ref.camera
    exact = [c for c in CAMERAS if c != cur and not (c == "close-up" and cur != "front")]
    if rng.random() < 0.65:
        val = choice(rng, exact)
        key = "Viewpoint/zoom-out" if (val == "front" and cur == "close-up") else f"Viewpoint/{val}"
        return _global_clause("Viewpoint", "camera", [val], key, rng)
    return _global_clause("Viewpoint", "camera", [c for c in CAMERAS if c != cur], "Viewpoint/different", rng)


def gen_style(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    cur = ref.style
    opts = [("exact", 0.55), ("negation", 0.3)] + ([("drawn", 0.15)] if cur == "photo" else [])
    v = _variant(rng, opts)
    others = [s for s in STYLES if s != cur]
    if v == "exact":
        val = choice(rng, others)
        return _global_clause("Style", "style", [val], f"Style/{val}", rng)
    values = others if v == "negation" else ["cartoon", "pixel art", "sketch"]
    return _global_clause("Style", "style", values, f"Style/{v}", rng, cur=T.STYLE_NP[cur])


def gen_time(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    cur = ref.time
    i = TIMES.index(cur)
    opts = [("exact", 0.5), ("negation", 0.2)]
    if i < len(TIMES) - 1:
        opts.append(("later", 0.3))
    if i > 0:
        opts.append(("earlier", 0.3))
    v = _variant(rng, opts)
    if v == "exact":
        val = choice(rng, [t for t in TIMES if t != cur])
        return _global_clause("Time", "time", [val], f"Time/{val}", rng)
    values = {"later": TIMES[i + 1 :], "earlier": TIMES[:i], "negation": [t for t in TIMES if t != cur]}[v]
    return _global_clause("Time", "time", values, f"Time/{v}", rng, cur=T.TIME_NOUN[cur])


def gen_weather(ref: Scene, rng: np.random.Generator, avoid: frozenset[int]) -> Clause | None:
    cur = ref.weather
    opts = [("exact", 0.5)]
    if cur in ("clear", "foggy"):
        opts.append(("precipitation", 0.25))
    if cur == "clear":
        opts.append(("bad", 0.25))
    else:
        opts.append(("negation", 0.25))
    v = _variant(rng, opts)
    if v == "exact":
        val = choice(rng, [w for w in WEATHERS if w != cur])
        return _global_clause("Weather", "weather", [val], f"Weather/{val}", rng)
    values = {
        "precipitation": ["rainy", "snowy"],
        "bad": ["rainy", "snowy", "foggy"],
        "negation": [w for w in WEATHERS if w != cur],
    }[v]
    return _global_clause("Weather", "weather", values, f"Weather/{v}", rng, cur=T.WEATHER_ING.get(cur, cur))


Generator = Callable[[Scene, np.random.Generator, frozenset[int]], "Clause | None"]
GENERATORS: dict[str, Generator] = {
    "Color": gen_color,
    "Material": gen_material,
    "Shape": gen_shape,
    "Texture": gen_texture,
    "Addition": gen_addition,
    "Remove": gen_remove,
    "Replace": gen_replace,
    "Count": gen_count,
    "Spatial": gen_spatial,
    "Action": gen_action,
    "Viewpoint": gen_viewpoint,
    "Style": gen_style,
    "Time": gen_time,
    "Weather": gen_weather,
}


def make_edit(sub: str, ref: Scene, rng: np.random.Generator, three_fraction: float = 0.25) -> Edit | None:
    """An edit of subcategory `sub` for this reference, or None when the scene does not suit it."""
    if sub != "Complex":
        clause = GENERATORS[sub](ref, rng, frozenset())
        return None if clause is None else Edit(sub, [clause], clause.text)
    want = 3 if rng.random() < three_fraction else 2
    clauses: list[Clause] = []
    touched: frozenset[int] = frozenset()
    for s in rng.permutation(SIMPLE):
        s = str(s)
        if s in STRUCTURAL and any(c.subcategory in STRUCTURAL for c in clauses):
            continue
        c = GENERATORS[s](ref, rng, touched)
        if c is None or c.touched & touched:
            continue
        clauses.append(c)
        touched |= c.touched
        if len(clauses) == want:
            break
    if len(clauses) < 2:
        return None
    forms = T.COMPLEX_JOIN2 if len(clauses) == 2 else T.COMPLEX_JOIN3
    text = choice(rng, forms).format(**dict(zip("abc", (c.text for c in clauses), strict=False)))
    return Edit("Complex", clauses, text)
