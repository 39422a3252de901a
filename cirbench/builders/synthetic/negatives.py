"""Near misses: op lists a careless edit would perform instead of the asked one (hard negatives).

Partial edits (a Complex edit with some clauses left out), a wrong value of the edited attribute, the
edit applied to the wrong object or to another attribute, an object added with the wrong shape, colour or
place, the wrong object removed or moved, the wrong count. The caller realises them and keeps only scenes
that do not satisfy the query.
"""

from __future__ import annotations

import itertools

import numpy as np

from cirbench.builders.synthetic.edits import Edit
from cirbench.builders.synthetic.predicate import Op
from cirbench.builders.synthetic.scene import GLOBAL_ATTRS, SHAPES, SLOTS, VOCAB, Scene, choice


def _wrong_variants(op: Op, ref: Scene, rng: np.random.Generator, busy: frozenset[int]) -> list[Op]:
    """Ops a careless edit would perform instead: wrong value, wrong object, wrong attribute, wrong place."""
    kind = op["op"]
    out: list[Op] = []
    others = [o for o in ref.objects if o.slot not in busy]
    if kind == "set":
        attr = op["attr"]
        cur = ref.get(attr) if "obj" not in op else ref.at(op["obj"]).get(attr)  # type: ignore[union-attr]
        wrong = [v for v in VOCAB[attr] if v not in op["values"] and v != cur]
        if wrong:
            out.append({**op, "values": [choice(rng, wrong)]})
        if "obj" in op:
            for o2 in others:
                vals = [v for v in op["values"] if v != o2.get(attr)]
                if o2.slot != op["obj"] and vals:
                    out.append({**op, "obj": o2.slot, "values": [choice(rng, vals)]})
            o = ref.at(op["obj"])
            assert o is not None
            b = choice(rng, [a for a in ("color", "material", "texture", "action") if a != attr])
            vals = [v for v in VOCAB[b] if v != o.get(b)]
            out.append({"op": "set", "attr": b, "obj": op["obj"], "values": vals})
        else:
            b = choice(rng, [a for a in GLOBAL_ATTRS if a != attr])
            out.append({"op": "set", "attr": b, "values": [v for v in VOCAB[b] if v != ref.get(b)]})
    elif kind == "add":
        spec = op["objects"][0]
        for a in ("shape", "color"):
            if a in spec:
                wrong = [v for v in VOCAB[a] if v not in spec[a]]
                out.append({"op": "add", "objects": [{**spec, a: [choice(rng, wrong)]}, *op["objects"][1:]]})
        if "slots" in spec:
            outside = [s for s in SLOTS if s not in spec["slots"]]
            out.append({"op": "add", "objects": [{**spec, "slots": outside}, *op["objects"][1:]]})
        out.append({"op": "add", "objects": [*op["objects"], dict(spec)]})
        if len(op["objects"]) > 1:
            out.append({"op": "add", "objects": op["objects"][:-1]})
    elif kind == "remove":
        rest = [o.slot for o in others if o.slot not in op["objs"]]
        if rest:
            out.append({"op": "remove", "objs": [choice(rng, rest)], "count": 1})
        if op["count"] < len(op["objs"]):
            out.append({**op, "count": op["count"] + 1})
        elif op["count"] > 1:
            out.append({**op, "count": op["count"] - 1})
    elif kind == "replace":
        o = ref.at(op["obj"])
        assert o is not None
        wrong = [s for s in SHAPES if s not in op["new"]["shape"] and s != o.shape]
        out.append({**op, "new": {**op["new"], "shape": [choice(rng, wrong)]}})
        for o2 in others:
            if o2.slot != op["obj"]:
                out.append({**op, "obj": o2.slot})
    elif kind == "move":
        o = ref.at(op["obj"])
        assert o is not None
        elsewhere = [s for s in ref.free_slots if s not in op["slots"]]
        if elsewhere:
            out.append({**op, "slots": elsewhere})
        for o2 in others:
            if o2.slot != op["obj"] and o2.slot not in op["slots"]:
                out.append({**op, "obj": o2.slot})
    elif kind == "swap":
        a, b = op["objs"]
        for o2 in others:
            if o2.slot not in (a, b):
                out.append({"op": "swap", "objs": [a, o2.slot]})
        if ref.free_slots:
            out.append({"op": "move", "obj": a, "slots": list(ref.free_slots)})
    return out


def near_miss_ops(edit: Edit, ref: Scene, rng: np.random.Generator) -> tuple[list[list[Op]], list[list[Op]]]:
    """(partial edits, wrong edits): op lists whose results look like a target but must not be one."""
    ops = edit.ops
    partial: list[list[Op]] = []
    if len(ops) > 1:
        for k in range(1, len(ops)):
            partial += [list(sub) for sub in itertools.combinations(ops, k)]
    busy = frozenset(itertools.chain.from_iterable(c.touched for c in edit.clauses))
    wrong: list[list[Op]] = []
    for i, op in enumerate(ops):
        for alt in _wrong_variants(op, ref, rng, busy):
            wrong.append([*ops[:i], alt, *ops[i + 1 :]])
    order = rng.permutation(len(wrong))
    return partial, [wrong[i] for i in order]
