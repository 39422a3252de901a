"""Single-target variants (SoFT-style): add the missing details of one chosen target to an underspecified
text, one detail at a time, until exactly one gallery image satisfies it.

A detail is a "pin": it narrows one open choice of an op to the chosen target's value. Pins only narrow, so
the refined target set is a subset of the original one; a pin that would not shrink the current set is
skipped (it could never become useful later: the set only shrinks), which keeps the texts short.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cirbench.builders.synthetic import texts as T
from cirbench.builders.synthetic.edits import Edit
from cirbench.builders.synthetic.predicate import GalleryIndex, Op, compile_ops
from cirbench.builders.synthetic.scene import Scene

Pin = tuple[int, tuple[Any, ...], Any]
"""(op index, path of the field inside the op, the target's value)."""
ADD_FIELDS = ("color", "slots", "size", "texture", "material", "action", "shape")
REPLACE_FIELDS = ("color", "size", "texture", "material", "action")


@dataclass
class Refined:
    ops: list[Op]
    text: str
    pins: list[Pin]
    positions: list[int]


def candidate_pins(ops: Sequence[Op], choices: Sequence[dict[str, Any]]) -> list[Pin]:
    """Every open choice of the edit, pinned to what the chosen target did, in the order they are tried."""
    pins: list[Pin] = []
    for i, (op, ch) in enumerate(zip(ops, choices, strict=True)):
        kind = op["op"]
        if kind == "set" and len(op["values"]) > 1:
            pins.append((i, ("values",), ch["value"]))
        elif kind == "add":
            for j, (spec, made) in enumerate(zip(op["objects"], ch["objects"], strict=True)):
                for f in ADD_FIELDS:
                    allowed = spec.get(f)
                    if allowed is None or len(allowed) > 1:
                        pins.append((i, ("objects", j, f), made["slot" if f == "slots" else f]))
        elif kind == "replace":
            for f in REPLACE_FIELDS:
                if f not in op["new"] or len(op["new"][f]) > 1:
                    pins.append((i, ("new", f), ch["object"][f]))
        elif kind == "remove" and op["count"] < len(op["objs"]):
            pins.append((i, ("objs",), ch["removed"]))
        elif kind == "move" and len(op["slots"]) > 1:
            pins.append((i, ("slots",), ch["slot"]))
    return pins


def apply_pin(ops: Sequence[Op], pin: Pin) -> list[Op]:
    out = copy.deepcopy(list(ops))
    i, path, val = pin
    op = out[i]
    if path == ("objs",):
        op["objs"], op["count"] = list(val), len(val)
    elif path[0] == "objects":
        op["objects"][path[1]][path[2]] = [val]
    elif path[0] == "new":
        op["new"][path[1]] = [val]
    else:
        op[path[0]] = [val]
    return out


def _details(edit: Edit, ref: Scene, pins: Sequence[Pin], rng: np.random.Generator) -> list[str]:
    """The pins as short sentences, grouped per op ('the new star should be red and at the far left')."""
    out: list[str] = []
    for i, clause in enumerate(edit.clauses):
        mine = [p for p in pins if p[0] == i]
        if not mine:
            continue
        op = clause.op
        kind = op["op"]
        if kind == "set" and "obj" in op:
            out.append(f"{clause.subject} should end up {T.pin_fragment(op['attr'], mine[0][2])}")
        elif kind == "set":
            out.append(f"specifically {T.pin_fragment(op['attr'], mine[0][2])}")
        elif kind == "add":
            n = len(op["objects"])
            for j in range(n):
                frags = [T.pin_fragment(p[1][2], p[2]) for p in mine if p[1][1] == j]
                if not frags:
                    continue
                shape = op["objects"][j].get("shape", ["object"])[0]
                subject = (
                    clause.subject
                    if n == 1
                    else (f"one of the new {T.plural(shape)}" if j == 0 else f"another new {shape}")
                )
                out.append(f"{subject} should be {T.join_and(frags)}")
        elif kind == "replace":
            frags = [T.pin_fragment(p[1][1], p[2]) for p in mine]
            out.append(f"{clause.subject} should be {T.join_and(frags)}")
        elif kind == "remove":
            gone = [f"the {T.describe(ref, s, rng)}" for s in mine[0][2]]
            out.append(f"specifically remove {T.join_and(gone)}")
        elif kind == "move":
            out.append(f"{clause.subject} should end up {T.SLOT_AT[int(mine[0][2])]}")
    return out


def refine(
    edit: Edit,
    ref: Scene,
    choices: Sequence[dict[str, Any]],
    index: GalleryIndex,
    positions: Sequence[int],
    rng: np.random.Generator,
) -> Refined:
    """Narrow the edit towards the target made by `choices` until it alone (of `positions`) satisfies it."""
    ops = edit.ops
    current = list(positions)
    kept: list[Pin] = []
    for pin in candidate_pins(ops, choices):
        if len(current) <= 1:
            break
        trial = apply_pin(ops, pin)
        narrowed = index.matching(compile_ops(ref, trial), within=current)
        if len(narrowed) < len(current):
            ops, current = trial, narrowed
            kept.append(pin)
    details = _details(edit, ref, kept, rng)
    text = edit.text + ("; " + "; ".join(details) if details else "")
    return Refined(ops=ops, text=text, pins=kept, positions=current)
