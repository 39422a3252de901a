"""From a run table to scores: per-query metric values, then means per group with bootstrap intervals.

Both `cirbench eval` and `cirbench compare` go through `per_query_values(run_table, protocol)`, so every
number in a result can be recomputed from its `run.parquet` alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from cirbench.core.metrics import aggregate, parse_metric, per_query_metrics
from cirbench.core.protocol import LEGACY_BREAKDOWNS, Protocol, scorer_from_record
from cirbench.core.result import Score
from cirbench.core.stats import bootstrap_ci, stratified_mean


def _id_matrix(lists: Sequence[Sequence[str]], ids: dict[str, int], depth: int) -> np.ndarray:
    out = np.full((len(lists), max(depth, 1)), -1, dtype=np.int64)
    for q, row in enumerate(lists):
        for j, cid in enumerate(row[:depth]):
            out[q, j] = ids.setdefault(cid, len(ids))
    return out


def per_query_values(
    table: pa.Table, protocol: Protocol | Mapping[str, Any], metrics: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Per-query values of the protocol's metrics, computed from a run table (see cirbench.core.run).

    `protocol` is a Protocol or its record in a result. A benchmark whose released evaluator differs from
    the generic one has its own `scorer` (a registered function, named in the record); `recall_on`
    "target_id" counts only the annotated target for Recall@K; geolocalisation metrics (Acc@<x>km) come
    from the GPS columns of the run table (cirbench.core.geo.gps_columns).
    """
    if isinstance(protocol, Protocol):
        protocol = protocol.to_dict()
    names = list(metrics or protocol["metrics"])
    scorer = scorer_from_record(protocol.get("scorer"))
    if scorer is not None:
        return scorer(table, protocol, names)
    geo_names = [n for n in names if parse_metric(n).kind == "geo"]
    names = [n for n in names if n not in geo_names]
    ranked_l = table.column("ranked_ids").to_pylist()
    relevant_l = table.column("relevant_ids").to_pylist()
    # A list shorter than the run depth is the whole (eligible) gallery: pad it rather than call it shallow.
    depth = max(
        [len(r) for r in ranked_l]
        + [int((protocol.get("search") or {}).get("top_k") or protocol.get("top_k") or 0)]
    )
    ids: dict[str, int] = {}
    ranked = _id_matrix(ranked_l, ids, depth)
    relevant = [np.array([ids.setdefault(c, len(ids)) for c in rel], dtype=np.int64) for rel in relevant_l]
    subset = None
    if "subset_ranked_ids" in table.column_names:
        sub_l = table.column("subset_ranked_ids").to_pylist()
        sub_k = max(
            [parse_metric(n).k or 0 for n in names if parse_metric(n).kind == "recall_subset"]
            + [1 if "Avg" in names else 0, *(len(r) for r in sub_l)]
        )
        subset = _id_matrix(sub_l, ids, sub_k)
    first = (
        np.asarray(table.column("first_relevant_rank").to_pylist(), dtype=np.int64)
        if "first_relevant_rank" in table.column_names
        else None
    )
    norm = protocol.get("ap_normaliser", "min(K,|G|)")
    values = (
        per_query_metrics(names, ranked, relevant, subset_ranked=subset, first_rank=first, ap_normaliser=norm)
        if names
        else {}
    )
    if protocol.get("recall_on") == "target_id" and "target_id" in table.column_names:
        # CIRCO: Recall@K counts the annotated target image only, mAP uses all ground truths.
        targets = [
            np.array([ids.setdefault(t, len(ids))] if t else [], dtype=np.int64)
            for t in table.column("target_id").to_pylist()
        ]
        recall_names = [n for n in names if parse_metric(n).kind in ("recall", "mean_recall")]
        if recall_names:
            values.update(per_query_metrics(recall_names, ranked, targets, ap_normaliser=norm))
    if geo_names:
        values.update(_geo_values(table, geo_names))
    return {parse_metric(n).name: values[parse_metric(n).name] for n in [*names, *geo_names]}


def _geo_values(table: pa.Table, names: Sequence[str]) -> dict[str, np.ndarray]:
    from cirbench.core.geo import geo_hits

    cols = ("pred_lat", "pred_lon", "lat", "lon")
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise ValueError(f"geolocalisation metrics need the run's GPS columns; missing {missing}")
    get = {c: np.asarray(table.column(c).to_pylist(), dtype=np.float64) for c in cols}
    pred = np.stack([get["pred_lat"], get["pred_lon"]], axis=1)
    true = np.stack([get["lat"], get["lon"]], axis=1)
    thresholds = [float(parse_metric(n).name[4:-2]) for n in names]
    return geo_hits(pred, true, thresholds)


def breakdowns(
    table: pa.Table, protocol: Protocol | Mapping[str, Any] | None = None
) -> dict[str, list[list[str]]]:
    """Per query, the groups it belongs to for each breakdown kind the protocol declares (kind -> run
    column; a query may be in several groups, e.g. CIRCO's semantic aspects). Without a protocol: the
    kinds every result of schema 1.x was broken down by."""
    if isinstance(protocol, Protocol):
        declared: Mapping[str, str] = protocol.breakdowns
    else:
        declared = (protocol or {}).get("breakdowns") or LEGACY_BREAKDOWNS
    out: dict[str, list[list[str]]] = {}
    for kind, col in declared.items():
        if col in table.column_names:
            vals = table.column(col).to_pylist()
            groups = [[v] if isinstance(v, str) else list(v or []) for v in vals]
            if any(groups):
                out[kind] = groups
    return out


def score(
    values: np.ndarray,
    metric: str,
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
    strata: np.ndarray | None = None,
) -> Score:
    """The metric's value over the queries with a defined value, and its bootstrap interval.

    With `strata` (one label per query) the value is the mean of the per-stratum values and the interval
    resamples queries within each stratum (the protocol's aggregate "categories").
    """
    spec = parse_metric(metric)
    keep = ~np.isnan(values)
    finite = values[keep]
    if finite.size == 0:
        return Score(value=float("nan"), n=0)
    kept_strata = None if strata is None else strata[keep]
    value = (
        aggregate(metric, finite)
        if kept_strata is None
        else stratified_mean(finite, kept_strata, spec.aggregate)
    )
    if n_resamples > 0 and finite.size > 1:
        lo, hi = bootstrap_ci(
            finite,
            statistic=spec.aggregate,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            strata=kept_strata,
        )
    else:
        lo, hi = value, value
    return Score(value=float(value), ci_low=float(lo), ci_high=float(hi), n=int(finite.size))


def query_strata(
    protocol: Mapping[str, Any], groups: Mapping[str, list[list[str]]], n: int
) -> np.ndarray | None:
    """Per query, the stratum its headline scores average over: its category under the protocol's
    aggregate "categories", else None (every query counts once)."""
    if protocol.get("aggregate", "queries") != "categories":
        return None
    cats = groups.get("category")
    if cats is None or len(cats) != n or any(len(c) != 1 for c in cats):
        raise ValueError(
            "the protocol averages over categories (aggregate 'categories'), but not every query has "
            "exactly one category"
        )
    return np.asarray([c[0] for c in cats], dtype=object)


def grouped_scores(
    values: Mapping[str, np.ndarray],
    groups: Mapping[str, list[list[str]]],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict[str, Any]:
    """{kind: {group: {metric: Score}}}: kind "overall" has the one group "overall", then each breakdown
    kind its groups in a stable order.

    `strata` (see `query_strata`) makes each overall score the mean of its strata's scores.
    """
    kw: dict[str, Any] = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    out: dict[str, Any] = {
        "overall": {"overall": {m: score(v, m, strata=strata, **kw) for m, v in values.items()}}}
    for kind, per_query in groups.items():
        members: dict[str, list[int]] = defaultdict(list)
        for q, gs in enumerate(per_query):
            for g in gs:
                members[g].append(q)
        out[kind] = {
            g: {m: score(v[np.asarray(idx)], m, **kw) for m, v in values.items()}
            for g, idx in sorted(members.items())
        }
    return out
