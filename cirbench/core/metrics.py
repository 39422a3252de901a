"""Vectorised CIR ranking metrics.

Everything here works on a *run*: an int64 array ``ranked`` of shape (Q, K) holding the corpus positions of
the top-K results of each query, best first, padded with ``-1`` when a query has fewer than K candidates.
Relevance is a per-query list of int64 arrays of corpus positions.

The metrics follow the benchmarks' reference code rather than textbook IR definitions, because the
benchmarks disagree with each other and with trec_eval:

* ``R@K`` is the CIR "Recall@K": the *hit rate*, 1 if any relevant item is in the top K (SEARLE's
  ``labels[:, :k].any(1)``), not the fraction of relevant items retrieved.
* ``mAP@K`` divides the summed precisions by one of three normalisers (``AP_NORMALISERS``): CIRCO's
  ``min(K, |G|)`` (the default), trec_eval/ranx's ``|G|``, or SoFT's number of hits in the top K.
* ``R_s@K`` is CIRR's Recall_subset, computed on a second run restricted to each query's candidate subset.

Per-query values are in [0, 1] (not percent); ``aggregate`` turns them into one number per metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AP_NORMALISERS",
    "METRIC_KINDS",
    "MetricSpec",
    "aggregate",
    "average_precision_at_k",
    "hit_matrix",
    "parse_metric",
    "per_query_metrics",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank",
]

AP_NORMALISERS = ("min(K,|G|)", "|G|", "hits")  # CIRCO, trec_eval/ranx, SoFT

METRIC_KINDS = ("recall", "recall_subset", "map", "mrr", "medr", "precision", "avg", "mean_recall", "geo")

_VALID_FORMS = (
    "R@k / Recall@k, R_s@k / Rsubset@k / Recall_subset@k, mAP@k / MAP@k, P@k / Precision@k, "
    "MRR, MedR, Avg (CIRR's (R@5 + R_s@1)/2), meanR3 / meanR4 (CoVR), Acc@<x>km (geolocalisation); "
    "k is a positive integer"
)


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


def _check_run(ranked: np.ndarray, what: str = "ranked") -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (queries, depth) array, got shape {ranked.shape}")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"{what} must hold integer corpus positions, got dtype {ranked.dtype}")
    ranked = ranked.astype(np.int64, copy=False)
    if ranked.size and ranked.min() < -1:
        raise ValueError(f"{what} holds negative ids other than the -1 padding (min {ranked.min()})")
    return ranked


def _relevant_arrays(relevant: Sequence[np.ndarray], n_queries: int) -> list[np.ndarray]:
    if len(relevant) != n_queries:
        raise ValueError(f"relevant has {len(relevant)} entries but the run has {n_queries} queries")
    arrays = [np.asarray(r, dtype=np.int64).ravel() for r in relevant]
    for q, r in enumerate(arrays):
        if r.size and r.min() < 0:
            raise ValueError(f"relevant[{q}] holds a negative corpus position ({r.min()})")
    return arrays


def _count_relevant(relevant: Sequence[np.ndarray]) -> np.ndarray:
    """(Q,) number of *distinct* relevant items per query (a GT listed twice is still one item)."""
    return np.array([np.unique(np.asarray(r, dtype=np.int64)).size for r in relevant], dtype=np.int64)


def hit_matrix(ranked: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """(Q,K) bool: ``ranked[q, j]`` is relevant for query q.

    Membership is tested in one ``np.isin`` over encoded ``q * N + id`` keys, so the cost does not grow
    with a Python loop over K. ``-1`` padding is never a hit. A run should never list an id twice (the
    CIRCO server rejects such lists); if it does, only the first occurrence counts, so a duplicated
    relevant id cannot inflate any metric.
    """
    ranked = _check_run(ranked)
    n_queries, depth = ranked.shape
    rel = _relevant_arrays(relevant, n_queries)
    if n_queries == 0 or depth == 0:
        return np.zeros((n_queries, depth), dtype=bool)
    lengths = np.fromiter((r.size for r in rel), dtype=np.int64, count=n_queries)
    rel_ids = np.concatenate(rel) if lengths.sum() else np.zeros(0, dtype=np.int64)
    rel_q = np.repeat(np.arange(n_queries, dtype=np.int64), lengths)
    n_ids = int(max(ranked.max(), rel_ids.max() if rel_ids.size else -1)) + 1
    if n_ids > 0 and n_queries > (2**62) // n_ids:
        raise ValueError(f"{n_queries} queries x {n_ids} corpus ids overflow the int64 key encoding")
    valid = ranked >= 0
    run_keys = np.arange(n_queries, dtype=np.int64)[:, None] * n_ids + np.where(valid, ranked, 0)
    hits = np.isin(run_keys, rel_q * n_ids + rel_ids) & valid
    # Only repeated *hits* can change a metric, so deduplicate among the (few) hits, not the whole run:
    # np.nonzero is row-major (rank order) and np.unique returns each key's first occurrence.
    q_idx, j_idx = np.nonzero(hits)
    _, first = np.unique(run_keys[q_idx, j_idx], return_index=True)
    if first.size < q_idx.size:
        repeat = np.ones(q_idx.size, dtype=bool)
        repeat[first] = False
        hits[q_idx[repeat], j_idx[repeat]] = False
    return hits


def _check_k(hits: np.ndarray, k: int, what: str = "hits") -> np.ndarray:
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (queries, depth) array, got shape {hits.shape}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > hits.shape[1]:
        raise ValueError(f"k={k} exceeds the run depth {hits.shape[1]}; metrics are never silently truncated")
    return hits[:, :k]


def recall_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """(Q,) float64 in {0, 1}: any hit in the top k. This is the CIR "Recall@K" (a hit rate)."""
    return np.asarray(_check_k(hits, k).any(axis=1), dtype=np.float64)


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """(Q,) fraction of the top k that is relevant (padding counts as a miss, as in trec_eval's P@k)."""
    return _check_k(hits, k).sum(axis=1, dtype=np.float64) / k


def average_precision_at_k(
    hits: np.ndarray, k: int, n_relevant: np.ndarray, normaliser: str = "min(K,|G|)"
) -> np.ndarray:
    """(Q,) AP@k = sum_{j<=k} P@j * rel_j / norm.

    ``norm`` is ``min(k, |G|)`` (CIRCO, so a perfect top-k scores 1 even when |G| > k), ``|G|``
    (trec_eval ``map_cut``, ranx) or the number of hits in the top k (SoFT; AP 0 when there is none).
    Queries with ``n_relevant == 0`` get NaN: they have no defined AP and the caller drops them from means.
    """
    if normaliser not in AP_NORMALISERS:
        raise ValueError(f"unknown AP normaliser {normaliser!r}; choose one of {AP_NORMALISERS}")
    top = _check_k(hits, k).astype(np.float64)
    n_rel = np.asarray(n_relevant)
    if n_rel.shape != (top.shape[0],):
        raise ValueError(f"n_relevant must have shape ({top.shape[0]},), got {n_rel.shape}")
    n_rel = n_rel.astype(np.float64)
    cum = np.cumsum(top, axis=1)
    n_hits = cum[:, -1]
    if np.any(n_hits > n_rel):
        bad = int(np.argmax(n_hits > n_rel))
        raise ValueError(
            f"query {bad} has {int(n_hits[bad])} hits in its top {k} but n_relevant={int(n_rel[bad])}"
        )
    summed = (cum / np.arange(1, k + 1, dtype=np.float64) * top).sum(axis=1)
    if normaliser == "min(K,|G|)":
        norm = np.minimum(float(k), n_rel)
    elif normaliser == "|G|":
        norm = n_rel
    else:
        norm = n_hits
    ap = np.divide(summed, norm, out=np.zeros_like(summed), where=norm > 0)
    ap[n_rel == 0] = np.nan
    return ap


def reciprocal_rank(first_rank: np.ndarray) -> np.ndarray:
    """(Q,) 1 / first_rank; ``first_rank`` is 1-based and 0 means no relevant item was found (RR 0)."""
    fr = _check_first_rank(first_rank)
    return np.divide(1.0, fr, out=np.zeros(fr.shape, dtype=np.float64), where=fr > 0)


def _check_first_rank(first_rank: np.ndarray, n_queries: int | None = None) -> np.ndarray:
    fr = np.asarray(first_rank)
    if fr.ndim != 1:
        raise ValueError(f"first_rank must be 1-D, got shape {fr.shape}")
    if n_queries is not None and fr.shape[0] != n_queries:
        raise ValueError(f"first_rank has {fr.shape[0]} entries but the run has {n_queries} queries")
    if fr.size and not np.issubdtype(fr.dtype, np.integer):
        raise ValueError(f"first_rank must hold integer 1-based ranks, got dtype {fr.dtype}")
    fr = fr.astype(np.int64, copy=False)
    if fr.size and fr.min() < 0:
        raise ValueError("first_rank must be >= 0 (1-based rank, 0 = no relevant item found)")
    return fr


def _first_hit_rank(hits: np.ndarray) -> np.ndarray:
    """(Q,) 1-based rank of the first hit in the run, 0 when the run holds none."""
    if hits.shape[1] == 0:
        return np.zeros(hits.shape[0], dtype=np.int64)
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Metric names
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name, so that "Recall@5" and "R@5" land on the same key."""

    name: str  # canonical display name, e.g. "R@5", "R_s@1", "mAP@10", "MRR", "MedR", "Avg"
    kind: str  # one of METRIC_KINDS
    k: int | None
    aggregate: str  # "mean" or "median" (MedR)


_AT_K = re.compile(r"^\s*([A-Za-z_]+)\s*@\s*(\d+)\s*$")
_PREFIXES = {
    "r": ("recall", "R@{k}"),
    "recall": ("recall", "R@{k}"),
    "r_s": ("recall_subset", "R_s@{k}"),
    "rs": ("recall_subset", "R_s@{k}"),
    "rsubset": ("recall_subset", "R_s@{k}"),
    "r_subset": ("recall_subset", "R_s@{k}"),
    "recall_subset": ("recall_subset", "R_s@{k}"),
    "recallsubset": ("recall_subset", "R_s@{k}"),
    "map": ("map", "mAP@{k}"),
    "p": ("precision", "P@{k}"),
    "precision": ("precision", "P@{k}"),
}
_PLAIN = {
    "mrr": MetricSpec("MRR", "mrr", None, "mean"),
    "medr": MetricSpec("MedR", "medr", None, "median"),
    "avg": MetricSpec("Avg", "avg", None, "mean"),
    # CoVR's meanR3 = mean(R@1, R@5, R@10) and meanR4 = mean(R@1, R@5, R@10, R@50), per query then averaged
    "meanr3": MetricSpec("meanR3", "mean_recall", 3, "mean"),
    "meanr4": MetricSpec("meanR4", "mean_recall", 4, "mean"),
}
_GEO = re.compile(r"^\s*acc\s*@\s*(\d+(?:\.\d+)?)\s*km\s*$", re.I)
MEAN_RECALL_KS = {3: (1, 5, 10), 4: (1, 5, 10, 50)}


def parse_metric(name: str) -> MetricSpec:
    """Parse a metric name (case-insensitive); raise ValueError listing the valid forms otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"metric name must be a string, got {name!r}; valid forms: {_VALID_FORMS}")
    plain = _PLAIN.get(name.strip().lower())
    if plain is not None:
        return plain
    geo = _GEO.match(name)
    if geo:  # geolocalisation accuracy within X km: needs GPS, computed by cirbench.core.geo, not from hits
        km = float(geo.group(1))
        return MetricSpec(f"Acc@{int(km) if km.is_integer() else km}km", "geo", None, "mean")
    m = _AT_K.match(name)
    if m:
        entry = _PREFIXES.get(m.group(1).lower())
        k = int(m.group(2))
        if entry is not None and k >= 1:
            kind, template = entry
            return MetricSpec(template.format(k=k), kind, k, "mean")
    raise ValueError(f"unknown metric {name!r}; valid forms: {_VALID_FORMS}")


# ----------------------------------------------------------------------------------------------------
# Per-query evaluation
# ----------------------------------------------------------------------------------------------------


def _need_depth(spec: MetricSpec, k: int, depth: int, what: str) -> None:
    if k > depth:
        raise ValueError(
            f"{spec.name} needs the top {k} results but {what} has depth {depth}; "
            "rank deeper instead of truncating the metric"
        )


def per_query_metrics(
    metric_names: Sequence[str],
    ranked: np.ndarray,
    relevant: Sequence[np.ndarray],
    *,
    subset_ranked: np.ndarray | None = None,
    first_rank: np.ndarray | None = None,
    ap_normaliser: str = "min(K,|G|)",
) -> dict[str, np.ndarray]:
    """Per-query values of each metric, keyed by canonical name (see ``parse_metric``).

    * ``subset_ranked``: (Q, Ks) run restricted to each query's candidate subset (CIRR's R_s).
    * ``first_rank``: (Q,) 1-based rank of the best relevant item in the *full* ranking (0 = none). MRR and
      MedR use it when given, since the run is cut at K; without it they are computed from the run, so
      MRR is really MRR@K, and a query with no hit in the run gets MedR inf (the median is still exact
      whenever it is <= K).
    * MedR's per-query value is the first relevant rank, ``np.inf`` when none is found.
    * Queries with no relevant item at all (empty ``relevant[q]``) get NaN for every metric, so every mean
      runs over the same, answerable queries (AP is undefined for them, and a hit rate would be a free 0).
    * ``Avg`` is CIRR's composite: the per-query mean of R@5 and R_s@1.
    """
    if isinstance(metric_names, str):
        metric_names = [metric_names]
    specs = [parse_metric(n) for n in metric_names]
    ranked = _check_run(ranked)
    n_queries, depth = ranked.shape
    rel = _relevant_arrays(relevant, n_queries)
    if ap_normaliser not in AP_NORMALISERS:
        raise ValueError(f"unknown AP normaliser {ap_normaliser!r}; choose one of {AP_NORMALISERS}")
    if subset_ranked is not None:
        subset_ranked = _check_run(subset_ranked, "subset_ranked")
        if subset_ranked.shape[0] != n_queries:
            raise ValueError(f"subset_ranked has {subset_ranked.shape[0]} queries but ranked has {n_queries}")
    fr = _check_first_rank(first_rank, n_queries) if first_rank is not None else None

    n_rel = _count_relevant(rel)
    empty = n_rel == 0
    cache: dict[str, np.ndarray] = {}

    def hits() -> np.ndarray:
        if "hits" not in cache:
            cache["hits"] = hit_matrix(ranked, rel)
        return cache["hits"]

    def subset_hits(spec: MetricSpec) -> np.ndarray:
        if subset_ranked is None:
            raise ValueError(f"{spec.name} needs subset_ranked (the run restricted to each query's subset)")
        if "subset" not in cache:
            cache["subset"] = hit_matrix(subset_ranked, rel)
        return cache["subset"]

    def compute(spec: MetricSpec) -> np.ndarray:
        if spec.kind in ("recall", "precision", "map"):
            assert spec.k is not None
            _need_depth(spec, spec.k, depth, "ranked")
            if spec.kind == "recall":
                return recall_at_k(hits(), spec.k)
            if spec.kind == "precision":
                return precision_at_k(hits(), spec.k)
            return average_precision_at_k(hits(), spec.k, n_rel, ap_normaliser)
        if spec.kind == "recall_subset":
            assert spec.k is not None
            sub = subset_hits(spec)
            _need_depth(spec, spec.k, sub.shape[1], "subset_ranked")
            return recall_at_k(sub, spec.k)
        if spec.kind == "avg":
            r5, rs1 = parse_metric("R@5"), parse_metric("R_s@1")
            _need_depth(spec, 5, depth, "ranked")
            sub = subset_hits(spec)
            _need_depth(spec, 1, sub.shape[1], "subset_ranked")
            return (compute(r5) + compute(rs1)) / 2.0
        if spec.kind == "mean_recall":
            assert spec.k is not None
            parts = [compute(parse_metric(f"R@{k}")) for k in MEAN_RECALL_KS[spec.k]]
            return np.mean(parts, axis=0)
        if spec.kind == "geo":
            raise ValueError(f"{spec.name} needs GPS coordinates: cirbench.core.geo computes it, "
                             "not the hits")
        ranks = fr if fr is not None else _first_hit_rank(hits())
        if spec.kind == "mrr":
            return reciprocal_rank(ranks)
        # medr
        return np.where(ranks > 0, ranks.astype(np.float64), np.inf)

    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in out:
            continue
        values = np.asarray(compute(spec), dtype=np.float64).copy()
        values[empty] = np.nan
        out[spec.name] = values
    return out


def aggregate(name: str, values: np.ndarray) -> float:
    """Mean over non-NaN values (median for MedR); NaN when nothing is left. No x100 scaling here."""
    spec = parse_metric(name)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan")
    return float(np.median(v) if spec.aggregate == "median" else np.mean(v))
