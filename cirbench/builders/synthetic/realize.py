"""Realisation: turn an edit (a predicate with open choices) into concrete scenes that satisfy it.

Used for the targets of a query (sampled choices) and, applied to deliberately wrong op lists, for its
near misses. Unconstrained attributes of new objects follow the scene prior, so "add a triangle" mostly
adds a plain, matte, resting triangle, as a person would draw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from cirbench.builders.synthetic.predicate import Op
from cirbench.builders.synthetic.scene import (
    ACTIONS,
    GLOBAL_ATTRS,
    MATERIALS,
    OBJECT_ATTRS,
    SLOTS,
    TEXTURES,
    VOCAB,
    Obj,
    Scene,
    choice,
    ordered,
)

PRIOR: dict[str, dict[str, float]] = {
    "texture": dict(zip(TEXTURES, (0.4, 0.2, 0.2, 0.2), strict=True)),
    "material": dict(zip(MATERIALS, (0.5, 0.25, 0.25), strict=True)),
    "action": dict(zip(ACTIONS, (0.55, 0.15, 0.15, 0.15), strict=True)),
}
"""Unconstrained attributes of new objects follow the scene prior (mostly plain, matte and still)."""


def pick_value(rng: np.random.Generator, attr: str, allowed: Sequence[str] | None) -> str:
    """A value from the allowed set (the whole vocabulary when None), weighted by the scene prior."""
    vocab = VOCAB[attr]
    vals = list(vocab) if allowed is None else ordered(allowed, attr)
    w = np.array([PRIOR.get(attr, {}).get(v, 1.0) for v in vals], float)
    return str(choice(rng, vals, tuple(w / w.sum())))


def _new_obj(rng: np.random.Generator, slot: int, spec: dict[str, Any]) -> Obj:
    return Obj(slot=slot, **{a: pick_value(rng, a, spec.get(a)) for a in OBJECT_ATTRS})


def realize(
    ref: Scene, ops: Sequence[Op], rng: np.random.Generator
) -> tuple[Scene, list[dict[str, Any]]] | None:
    """One concrete scene satisfying the edit, with the choices made per op (None if a choice ran out)."""
    glob = {a: ref.get(a) for a in GLOBAL_ATTRS}
    cur: dict[int, Obj] = {o.slot: o for o in ref.objects}
    where: dict[int, int] = {o.slot: o.slot for o in ref.objects}
    choices: list[dict[str, Any]] = []
    for op in ops:
        kind = op["op"]
        if kind == "set":
            val = pick_value(rng, op["attr"], op["values"])
            if "obj" in op:
                s = where[op["obj"]]
                cur[s] = cur[s].with_attr(op["attr"], val)
            else:
                glob[op["attr"]] = val
            choices.append({"value": val})
        elif kind == "add":
            made = []
            for spec in op["objects"]:
                free = [s for s in spec.get("slots", SLOTS) if s not in cur]
                if not free:
                    return None
                o = _new_obj(rng, int(choice(rng, free)), spec)
                cur[o.slot] = o
                made.append(o.to_json())
            choices.append({"objects": made})
        elif kind == "remove":
            gone = sorted(int(x) for x in rng.permutation(op["objs"])[: op["count"]])
            for r in gone:
                del cur[where.pop(r)]
            choices.append({"removed": gone})
        elif kind == "replace":
            s = where[op["obj"]]
            cur[s] = _new_obj(rng, s, op["new"])
            choices.append({"object": cur[s].to_json()})
        elif kind == "move":
            s = where[op["obj"]]
            free = [t for t in op["slots"] if t not in cur]
            if not free:
                return None
            t = int(choice(rng, free))
            cur[t] = replace(cur.pop(s), slot=t)
            where[op["obj"]] = t
            choices.append({"slot": t})
        elif kind == "swap":
            a, b = op["objs"]
            sa, sb = where[a], where[b]
            cur[sa], cur[sb] = replace(cur[sb], slot=sa), replace(cur[sa], slot=sb)
            where[a], where[b] = sb, sa
            choices.append({})
        else:
            raise ValueError(f"unknown op {kind!r}")
    return Scene(objects=tuple(sorted(cur.values())), **glob), choices


def is_open(op: Op, ref: Scene) -> bool:
    """Whether an op leaves a choice open (so that several different scenes satisfy it)."""
    kind = op["op"]
    if kind == "set":
        return len(op["values"]) > 1
    if kind in ("add", "replace"):
        return True
    if kind == "remove":
        return bool(op["count"] < len(op["objs"]))
    if kind == "move":
        return len([s for s in op["slots"] if s in ref.free_slots]) > 1
    return False
