"""Edit texts as predicates over scenes, and a gallery index that finds every scene satisfying one.

An edit is a list of atomic operations (JSON dicts, stored verbatim in each query's `meta`):

    {"op": "set", "attr": "color", "obj": 2, "values": ["blue"]}      an object attribute ("obj" = ref slot)
    {"op": "set", "attr": "time", "values": ["sunset", "night"]}       a global attribute (no "obj")
    {"op": "add", "objects": [{"shape": ["star"], "slots": [0, 1]}]}   new objects; a missing key = any value
    {"op": "remove", "objs": [1, 3], "count": 1}                       exactly `count` of these objects go
    {"op": "replace", "obj": 2, "new": {"shape": ["heart"]}}           a new object in the same slot
    {"op": "move", "obj": 2, "slots": [0, 1]}                          the object moves into one of these
    {"op": "swap", "objs": [1, 3]}                                     two objects trade slots

Meaning: a scene satisfies the edit of reference R when it is R with these operations applied, where every
listed set is a choice and everything not mentioned stays exactly as in R. Every operation demands a real
change (the builder never lists the current value), so R itself never satisfies.

Compiled form: a disjunction of Patterns. A Pattern fixes an allowed value set per global attribute and a
list of entries (allowed slots and values per attribute); a scene matches when it has exactly one object per
entry under some one-to-one assignment.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cirbench.builders.synthetic.scene import GLOBAL_ATTRS, OBJECT_ATTRS, SLOTS, Obj, Scene

Op = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One object a matching scene must contain: allowed slots and allowed values per attribute."""

    slots: frozenset[int]
    attrs: tuple[frozenset[str], ...]
    """In OBJECT_ATTRS order."""

    def accepts(self, o: Obj) -> bool:
        return o.slot in self.slots and all(
            o.get(a) in vs for a, vs in zip(OBJECT_ATTRS, self.attrs, strict=True)
        )

    def exact(self) -> Obj | None:
        """The single object this entry allows, when it allows only one."""
        if len(self.slots) != 1 or any(len(v) != 1 for v in self.attrs):
            return None
        vals = {a: next(iter(v)) for a, v in zip(OBJECT_ATTRS, self.attrs, strict=True)}
        return Obj(slot=next(iter(self.slots)), **vals)


@dataclass(frozen=True)
class Pattern:
    globals: tuple[frozenset[str], ...]
    """In GLOBAL_ATTRS order."""
    entries: tuple[Entry, ...]

    def matches(self, scene: Scene) -> bool:
        if any(scene.get(a) not in vs for a, vs in zip(GLOBAL_ATTRS, self.globals, strict=True)):
            return False
        if len(scene.objects) != len(self.entries):
            return False
        taken: set[int] = set()
        loose: list[Entry] = []
        for e in self.entries:
            if len(e.slots) == 1:
                slot = next(iter(e.slots))
                o = scene.at(slot)
                if o is None or slot in taken or not e.accepts(o):
                    return False
                taken.add(slot)
            else:
                loose.append(e)
        rest = [o for o in scene.objects if o.slot not in taken]
        return any(
            all(e.accepts(o) for e, o in zip(loose, perm, strict=True))
            for perm in itertools.permutations(rest)
        )


def _full(attr: str) -> frozenset[str]:
    return frozenset(OBJECT_ATTRS[attr])


def _entry_from_spec(spec: Mapping[str, Any], slots: Iterable[int] | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"slots": frozenset(spec.get("slots", SLOTS) if slots is None else slots)}
    for a in OBJECT_ATTRS:
        e[a] = frozenset(spec[a]) if a in spec else _full(a)
    return e


def compile_ops(ref: Scene, ops: Sequence[Mapping[str, Any]]) -> list[Pattern]:
    """The edit as a disjunction of Patterns (a `remove` of k among n objects branches n-choose-k ways)."""
    State = tuple[dict[str, frozenset[str]], dict[Any, dict[str, Any]]]
    g0 = {a: frozenset([ref.get(a)]) for a in GLOBAL_ATTRS}
    e0: dict[Any, dict[str, Any]] = {
        ("ref", o.slot): {"slots": frozenset([o.slot]), **{a: frozenset([o.get(a)]) for a in OBJECT_ATTRS}}
        for o in ref.objects
    }
    states: list[State] = [(g0, e0)]
    n_new = 0
    for op in ops:
        kind = op["op"]
        nxt: list[State] = []
        for g, es in states:
            if kind == "set" and "obj" not in op:
                nxt.append(({**g, op["attr"]: frozenset(op["values"])}, es))
            elif kind == "set":
                key = ("ref", op["obj"])
                nxt.append((g, {**es, key: {**es[key], op["attr"]: frozenset(op["values"])}}))
            elif kind == "add":
                es2 = dict(es)
                for spec in op["objects"]:
                    es2[("new", n_new)] = _entry_from_spec(spec)
                    n_new += 1
                nxt.append((g, es2))
            elif kind == "remove":
                for gone in itertools.combinations(op["objs"], op["count"]):
                    nxt.append((g, {k: v for k, v in es.items() if k not in {("ref", s) for s in gone}}))
            elif kind == "replace":
                key = ("ref", op["obj"])
                nxt.append((g, {**es, key: _entry_from_spec(op["new"], slots=[op["obj"]])}))
            elif kind == "move":
                key = ("ref", op["obj"])
                nxt.append((g, {**es, key: {**es[key], "slots": frozenset(op["slots"])}}))
            elif kind == "swap":
                a, b = op["objs"]
                ka, kb = ("ref", a), ("ref", b)
                nxt.append(
                    (
                        g,
                        {
                            **es,
                            ka: {**es[ka], "slots": es[kb]["slots"]},
                            kb: {**es[kb], "slots": es[ka]["slots"]},
                        },
                    )
                )
            else:
                raise ValueError(f"unknown op {kind!r}")
        states = nxt
    out: list[Pattern] = []
    for g, es in states:
        entries = tuple(Entry(e["slots"], tuple(e[a] for a in OBJECT_ATTRS)) for _, e in sorted(es.items()))
        out.append(Pattern(tuple(g[a] for a in GLOBAL_ATTRS), entries))
    return out


def satisfies(patterns: Sequence[Pattern], scene: Scene) -> bool:
    return any(p.matches(scene) for p in patterns)


class GalleryIndex:
    """Finds every gallery scene satisfying a predicate without scanning the gallery.

    Scenes are bucketed by (global attributes, number of objects); a Pattern only looks in the buckets its
    global value sets allow, intersected with the scenes that contain its fully fixed objects.
    """

    def __init__(self, scenes: Sequence[Scene]) -> None:
        self.scenes = list(scenes)
        self._buckets: dict[tuple[Any, ...], list[int]] = {}
        self._with_obj: dict[Obj, set[int]] = {}
        for i, sc in enumerate(self.scenes):
            key = (*(sc.get(a) for a in GLOBAL_ATTRS), len(sc.objects))
            self._buckets.setdefault(key, []).append(i)
            for o in sc.objects:
                self._with_obj.setdefault(o, set()).add(i)

    def _candidates(self, p: Pattern) -> Iterable[int]:
        fixed = [o for e in p.entries if (o := e.exact()) is not None]
        if fixed:
            posting = [self._with_obj.get(o, set()) for o in fixed]
            cands: Iterable[int] = sorted(set.intersection(*posting))
            return cands
        out: list[int] = []
        for combo in itertools.product(*(sorted(v) for v in p.globals)):
            out.extend(self._buckets.get((*combo, len(p.entries)), ()))
        return out

    def matching(self, patterns: Sequence[Pattern], within: Iterable[int] | None = None) -> list[int]:
        """Sorted positions of the scenes satisfying any pattern (optionally only among `within`)."""
        hits: set[int] = set()
        pool = None if within is None else list(within)
        for p in patterns:
            cands = pool if pool is not None else self._candidates(p)
            hits.update(i for i in cands if i not in hits and p.matches(self.scenes[i]))
        return sorted(hits)
