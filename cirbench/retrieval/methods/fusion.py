"""Fusion as data: how a method combines its vectors and similarities, written as a small expression tree.

Training-free CIR methods differ mostly in how they fuse a few CLIP features (methods.md §7): CVSI sums
weighted query vectors, LDRE averages the features of 15 rewrites, Paracosm adds two cosine terms, XR fuses
ranked lists by reciprocal rank and rescales a score by min-max. Where the normalisation happens (before the
sum, after it, both or neither) changes the numbers, so it is an explicit field, never a default hidden in
code. Every node is a frozen dataclass with a `record()` that goes into the result as it was used.

Two kinds of node:
- vector nodes (`Vec`, `VecSum`, `MeanOver`) read named feature arrays and give one vector per row;
- score nodes (`Sim`, `Scores`, `Weighted`, `Product`, `MinMax`, `RRF`) give a (queries x gallery) matrix.
Every score node works row by row over the queries, so `scores` may be called on any block of query rows
(a large gallery is scored a block at a time) and gives the same numbers as on the whole set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

Features = Mapping[str, Any]
"""name -> (n, d) array; for a list of texts per row, an (n, m, d) array or a sequence of (m_i, d) arrays."""

_EPS = 1e-12


def _l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, _EPS)


# ------------------------------------------------------------------------------------------ vector nodes


@dataclass(frozen=True)
class Vec:
    """A named (n, d) feature array, optionally scaled to unit length."""

    name: str
    normalize: bool = False

    def vectors(self, feats: Features) -> np.ndarray:
        x = _get(feats, self.name)
        if x.ndim != 2:
            raise ValueError(f"feature {self.name!r} must be (rows, dim), got shape {x.shape}: "
                             "use MeanOver for a list of vectors per row")
        return _l2(x) if self.normalize else x

    def record(self) -> dict[str, Any]:
        return {"op": "vec", "name": self.name, "normalize": self.normalize}


@dataclass(frozen=True)
class VecSum:
    """sum_i w_i * x_i, with each x_i scaled to unit length first (`normalize_each`) and/or the sum after."""

    terms: tuple[tuple[float, VecNode], ...]
    normalize_each: bool = True
    normalize_sum: bool = True

    def vectors(self, feats: Features) -> np.ndarray:
        if not self.terms:
            raise ValueError("VecSum needs at least one term")
        parts = [(w, node.vectors(feats)) for w, node in self.terms]
        total = sum(w * (_l2(x) if self.normalize_each else x) for w, x in parts)
        out = np.asarray(total, dtype=np.float64)
        return _l2(out) if self.normalize_sum else out

    def record(self) -> dict[str, Any]:
        return {"op": "vec_sum", "terms": [[w, n.record()] for w, n in self.terms],
                "normalize_each": self.normalize_each, "normalize_sum": self.normalize_sum}


@dataclass(frozen=True)
class MeanOver:
    """The mean of each row's list of vectors (LDRE's 15 rewrites), normalised per vector and/or after."""

    name: str
    normalize_each: bool = True
    normalize_result: bool = True

    def vectors(self, feats: Features) -> np.ndarray:
        if self.name not in feats:
            _get(feats, self.name)  # raises, naming what there is
        means = []
        for i, r in enumerate(list(feats[self.name])):
            r = np.asarray(r, dtype=np.float64)
            if r.ndim != 2 or len(r) == 0:
                raise ValueError(f"feature {self.name!r} row {i}: need a non-empty list of vectors, "
                                 f"got shape {r.shape}")
            means.append((_l2(r) if self.normalize_each else r).mean(axis=0))
        out = np.stack(means)
        return _l2(out) if self.normalize_result else out

    def record(self) -> dict[str, Any]:
        return {"op": "mean_over", "name": self.name, "normalize_each": self.normalize_each,
                "normalize_result": self.normalize_result}


VecNode = Union[Vec, VecSum, MeanOver]  # noqa: UP007  (a runtime alias used in annotations of dataclasses)


# ------------------------------------------------------------------------------------------ score nodes


@dataclass(frozen=True)
class Sim:
    """<query vector, gallery vector> for every pair: cosine when both sides are normalised."""

    query: VecNode
    gallery: VecNode

    def scores(self, queries: Features, gallery: Features) -> np.ndarray:
        q, g = self.query.vectors(queries), self.gallery.vectors(gallery)
        if q.shape[1] != g.shape[1]:
            raise ValueError(f"query vectors are {q.shape[1]}-d but gallery vectors {g.shape[1]}-d")
        return np.asarray(q, dtype=np.float64) @ np.asarray(g, dtype=np.float64).T

    def record(self) -> dict[str, Any]:
        return {"op": "sim", "query": self.query.record(), "gallery": self.gallery.record()}


@dataclass(frozen=True)
class Scores:
    """A (queries x gallery) score matrix computed elsewhere (e.g. XR's entailment counts), by name."""

    name: str

    def scores(self, queries: Features, gallery: Features) -> np.ndarray:
        s = _get(queries, self.name)
        if s.ndim != 2:
            raise ValueError(f"scores {self.name!r} must be (queries, gallery), got shape {s.shape}")
        return s

    def record(self) -> dict[str, Any]:
        return {"op": "scores", "name": self.name}


@dataclass(frozen=True)
class Weighted:
    """sum_i w_i * s_i of score matrices (Paracosm's lambda and 1 - lambda)."""

    terms: tuple[tuple[float, ScoreNode], ...]

    def scores(self, queries: Features, gallery: Features) -> np.ndarray:
        if not self.terms:
            raise ValueError("Weighted needs at least one term")
        return np.asarray(sum(w * node.scores(queries, gallery) for w, node in self.terms), dtype=np.float64)

    def record(self) -> dict[str, Any]:
        return {"op": "weighted", "terms": [[w, n.record()] for w, n in self.terms]}


@dataclass(frozen=True)
class Product:
    """s_a * s_b elementwise (XR's count x minmax(s1))."""

    a: ScoreNode
    b: ScoreNode

    def scores(self, queries: Features, gallery: Features) -> np.ndarray:
        return self.a.scores(queries, gallery) * self.b.scores(queries, gallery)

    def record(self) -> dict[str, Any]:
        return {"op": "product", "a": self.a.record(), "b": self.b.record()}


@dataclass(frozen=True)
class MinMax:
    """Each query's scores rescaled to [0, 1]: (s - min) / (max - min) over its row (a constant row: 0)."""

    of: ScoreNode

    def scores(self, queries: Features, gallery: Features) -> np.ndarray:
        s = self.of.scores(queries, gallery)
        lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
        span = hi - lo
        return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)

    def record(self) -> dict[str, Any]:
        return {"op": "minmax", "of": self.of.record()}


@dataclass(frozen=True)
class RRF:
    """Reciprocal-rank fusion: sum over runs of 1 / (k + rank), rank 1 = a run's best item for the query.

    Ties in a run are ranked by gallery position (first one ahead). With `depth`, only each run's first
    `depth` items count; the others add 0.
    """

    runs: tuple[ScoreNode, ...]
    k: float = 60.0
    depth: int | None = None

    def scores(self, queries: Features, gallery: Features) -> np.ndarray:
        if not self.runs:
            raise ValueError("RRF needs at least one run")
        total: np.ndarray | None = None
        for run in self.runs:
            s = run.scores(queries, gallery)
            order = np.argsort(-s, axis=1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(1, s.shape[1] + 1)[None, :].repeat(len(s), 0), axis=1)
            contrib = 1.0 / (self.k + ranks)
            if self.depth is not None:
                contrib = np.where(ranks <= self.depth, contrib, 0.0)
            total = contrib if total is None else total + contrib
        assert total is not None
        return total

    def record(self) -> dict[str, Any]:
        return {"op": "rrf", "runs": [r.record() for r in self.runs], "k": self.k, "depth": self.depth}


ScoreNode = Union[Sim, Scores, Weighted, Product, MinMax, RRF]  # noqa: UP007


def scores(expr: ScoreNode, queries: Features, gallery: Features) -> np.ndarray:
    """The (queries x gallery) matrix of `expr` (float64); call it per block of query rows for a big set."""
    return expr.scores(queries, gallery)


def _get(feats: Features, name: str) -> np.ndarray:
    if name not in feats:
        raise KeyError(f"fusion needs the features {name!r}; given: {', '.join(sorted(feats)) or 'none'}")
    return np.asarray(feats[name], dtype=np.float64)


def rows(feats: Features, index: Sequence[int] | slice) -> dict[str, Any]:
    """The same features restricted to some query rows (for scoring a block at a time)."""
    out: dict[str, Any] = {}
    for name, value in feats.items():
        if isinstance(value, np.ndarray):
            out[name] = value[index]
        else:
            seq = list(value)
            out[name] = seq[index] if isinstance(index, slice) else [seq[i] for i in index]
    return out


__all__ = [
    "RRF", "MeanOver", "MinMax", "Product", "Scores", "Sim", "Vec", "VecSum", "Weighted", "rows", "scores",
]
