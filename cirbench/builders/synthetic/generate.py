"""Assemble one split: reference scenes, edits balanced over the 15 subcategories, targets, hard negatives,
distractors; then the exact target set of every query over the whole gallery, and the single-target variants.

Everything here works on scene graphs only; pixels come later (render.py), so ground truth never depends on
how a picture looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirbench.builders.synthetic.edits import SUBCATEGORIES, Edit, make_edit
from cirbench.builders.synthetic.negatives import near_miss_ops
from cirbench.builders.synthetic.predicate import GalleryIndex, Pattern, compile_ops, satisfies
from cirbench.builders.synthetic.realize import is_open, realize
from cirbench.builders.synthetic.refine import Refined, refine
from cirbench.builders.synthetic.scene import Scene, random_scene


@dataclass(frozen=True)
class SplitConfig:
    queries: int
    queries_per_reference: int = 4
    max_targets: int = 3
    max_hard_negatives: int = 2
    distractor_fraction: float = 0.05
    complex_three_fraction: float = 0.25
    single_target: bool = False
    """Also build the refined single-target variant of every query."""

    @staticmethod
    def from_mapping(d: Mapping[str, Any]) -> SplitConfig:
        known = set(SplitConfig.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            from cirbench.core.options import did_you_mean

            hints = "".join(did_you_mean(str(u), known) for u in sorted(unknown))
            raise ValueError(f"unknown split settings {sorted(unknown)}{hints}; known: {sorted(known)}")
        if "queries" not in d:
            raise ValueError("queries (the number of queries) is required")
        for name, value in d.items():
            if name == "single_target":
                ok, want = isinstance(value, bool), "true or false"
            elif name.endswith("_fraction"):
                ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
                want = "a fraction in [0, 1]"
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                want = "a whole number >= 0"
            if not ok:
                raise ValueError(f"{name} must be {want}, not {value!r}")
        return SplitConfig(**d)


@dataclass
class Draft:
    """A query before ids exist: scenes are referred to by value."""

    edit: Edit
    ref: Scene
    patterns: list[Pattern]
    targets: list[tuple[Scene, list[dict[str, Any]]]]
    hard: list[Scene]


@dataclass
class BuiltQuery:
    draft: Draft
    relevant: list[int]
    """Gallery positions satisfying the edit."""
    single: Refined | None = None


@dataclass
class BuiltSplit:
    name: str
    gallery: list[Scene]
    """Ordered by gallery id: position i has id ids[i]."""
    ids: list[str]
    queries: list[BuiltQuery]
    positions: dict[Scene, int] = field(default_factory=dict)

    def id_of(self, scene: Scene) -> str:
        return self.ids[self.positions[scene]]


def quotas(n: int) -> dict[str, int]:
    """n queries spread over the subcategories as evenly as possible (counts differ by at most one)."""
    base, extra = divmod(n, len(SUBCATEGORIES))
    return {s: base + (1 if i < extra else 0) for i, s in enumerate(SUBCATEGORIES)}


def draft_query(sub: str, ref: Scene, rng: np.random.Generator, cfg: SplitConfig) -> Draft | None:
    """An edit of `sub` on `ref` with realised targets and verified near misses (None if it does not fit)."""
    edit = make_edit(sub, ref, rng, cfg.complex_three_fraction)
    if edit is None:
        return None
    patterns = compile_ops(ref, edit.ops)
    if satisfies(patterns, ref):  # every op demands a change; this would be a generator bug
        raise AssertionError(f"reference satisfies its own edit: {edit.text!r}")
    want = int(rng.integers(2, cfg.max_targets + 1)) if any(is_open(op, ref) for op in edit.ops) else 1
    targets: list[tuple[Scene, list[dict[str, Any]]]] = []
    seen: set[Scene] = set()
    for _ in range(6 * want):
        got = realize(ref, edit.ops, rng)
        if got is None or got[0] in seen:
            continue
        if not satisfies(patterns, got[0]):
            raise AssertionError(f"a realisation of {edit.text!r} does not satisfy it")
        seen.add(got[0])
        targets.append(got)
        if len(targets) == want:
            break
    if not targets:
        return None
    partial, wrong = near_miss_ops(edit, ref, rng)
    hard: list[Scene] = []
    for ops in partial + wrong:
        if len(hard) >= cfg.max_hard_negatives:
            break
        got = realize(ref, ops, rng)
        if got is None or got[0] == ref or got[0] in seen or satisfies(patterns, got[0]):
            continue
        seen.add(got[0])
        hard.append(got[0])
    return Draft(edit, ref, patterns, targets, hard)


def build_split(
    name: str, cfg: SplitConfig, rng: np.random.Generator, forbidden_refs: frozenset[Scene] = frozenset()
) -> BuiltSplit:
    """Draft every query, lay out the gallery, then compute exact target sets over the whole gallery."""
    schedule = [s for s, k in quotas(cfg.queries).items() for _ in range(k)]
    pending = [schedule[i] for i in rng.permutation(len(schedule))]
    drafts: list[Draft] = []
    gallery: dict[Scene, None] = {}
    barren = 0
    while pending:
        ref = random_scene(rng)
        if ref in forbidden_refs or ref in gallery:
            continue
        used: set[str] = set()
        i = scanned = 0
        per_ref = cfg.queries_per_reference
        while i < len(pending) and len(used) < per_ref and scanned < 3 * per_ref:
            sub = pending[i]
            scanned += 1
            d = None if sub in used else draft_query(sub, ref, rng, cfg)
            if d is None:
                i += 1
                continue
            pending.pop(i)
            used.add(sub)
            drafts.append(d)
            for sc in (ref, *(t for t, _ in d.targets), *d.hard):
                gallery.setdefault(sc, None)
        barren = 0 if used else barren + 1
        if barren > 2000:
            raise RuntimeError(f"cannot generate queries for {sorted(set(pending))}")
    n_distractors = round(cfg.distractor_fraction * len(gallery))
    while n_distractors > 0:
        sc = random_scene(rng)
        if sc not in gallery and sc not in forbidden_refs:
            gallery[sc] = None
            n_distractors -= 1
    scenes = list(gallery)
    order = rng.permutation(len(scenes))
    laid = [scenes[i] for i in order]
    ids = [f"{name}-{i:06d}" for i in range(len(laid))]
    split = BuiltSplit(name, laid, ids, [], {sc: i for i, sc in enumerate(laid)})
    index = GalleryIndex(laid)
    for d in drafts:
        rel = index.matching(d.patterns)
        pos = split.positions
        wrong = [pos[d.ref], *(pos[h] for h in d.hard)]
        if any(p in rel for p in wrong) or any(pos[t] not in rel for t, _ in d.targets):
            raise AssertionError(f"inconsistent ground truth for {d.edit.text!r}")
        q = BuiltQuery(d, rel)
        if cfg.single_target:
            primary, choices = d.targets[0]
            q.single = refine(d.edit, d.ref, choices, index, rel, rng)
            if q.single.positions != [pos[primary]]:
                raise AssertionError(f"refinement of {d.edit.text!r} did not isolate its target")
        split.queries.append(q)
    return split
