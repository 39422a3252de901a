"""`cirbench compare`: is model B really better than model A on this task, query by query?

Two results are comparable only when they scored the same queries of the same dataset revision under the
same protocol. Per-query values are recomputed from each result's run.parquet, aligned by query id, and
compared with a paired bootstrap (or a sign-flip permutation test). Every difference is B - A: positive
when B scores higher. Under a protocol that averages over categories (FashionIQ) the difference is the
mean of the per-category differences, resampled within each category.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

import cirbench.tasks  # noqa: F401  (registers the benchmarks' own scorers, named in their results)
from cirbench.core.metrics import parse_metric
from cirbench.core.result import Result
from cirbench.core.scoring import breakdowns, per_query_values, query_strata
from cirbench.core.stats import PairedTest, paired_bootstrap, paired_permutation

PROTOCOL_FIELDS = (
    "name",
    "metrics",
    "top_k",
    "ap_normaliser",
    "exclude_reference",
    "gallery",
    "text_template",
    "caption_join",
    "aggregate",
    "recall_on",
    "scorer",
    "notes",
)
"""Protocol fields that must agree; instructions and search settings belong to the model run."""


def incompatibilities(a: Result, b: Result) -> list[str]:
    problems = []
    for key in ("name", "split", "revision", "limit"):
        if a.task.get(key) != b.task.get(key):
            problems.append(f"task {key} differs: {a.task.get(key)!r} vs {b.task.get(key)!r}")
    for key in PROTOCOL_FIELDS:
        if a.protocol.get(key) != b.protocol.get(key):
            problems.append(f"protocol {key} differs: {a.protocol.get(key)!r} vs {b.protocol.get(key)!r}")
    return problems


def compare_results(
    a: Result,
    b: Result,
    *,
    force: bool = False,
    method: str = "bootstrap",
    n_resamples: int = 10000,
    seed: int = 0,
    metrics: list[str] | None = None,
) -> tuple[list[PairedTest], dict[str, Any]]:
    """Paired tests of B - A per metric (`diff` = mean(B - A), `mean_a` is A's score, `mean_b` B's);
    raises ValueError when the results are not comparable."""
    problems = incompatibilities(a, b)
    if problems and not force:
        raise ValueError(
            "results are not comparable (use --force to compare anyway):\n- " + "\n- ".join(problems)
        )
    if any(r.run_path() is None for r in (a, b)):
        raise ValueError("both results need their run.parquet (files.run) to compare per query")
    ta, tb = a.read_run(), b.read_run()  # each checked to be the run its result.json was computed from
    # MedR is a median of ranks (inf where nothing was found): a paired mean test does not apply to it.
    metric_names = metrics or [
        m for m in a.protocol["metrics"] if m in b.protocol["metrics"] and parse_metric(m).kind != "medr"
    ]
    va = per_query_values(ta, a.protocol, metric_names)
    vb = per_query_values(tb, b.protocol, metric_names)
    qa, qb = ta.column("query_id").to_pylist(), tb.column("query_id").to_pylist()
    common = sorted(set(qa) & set(qb))
    if not common:
        raise ValueError("the two runs share no query id")
    ia = {q: i for i, q in enumerate(qa)}
    ib = {q: i for i, q in enumerate(qb)}
    sel_a = np.array([ia[q] for q in common])
    sel_b = np.array([ib[q] for q in common])
    test = paired_bootstrap if method == "bootstrap" else paired_permutation
    strata = query_strata(a.protocol, breakdowns(ta, a.protocol), len(qa))
    out = []
    for m in metric_names:
        x, y = va[m][sel_a], vb[m][sel_b]
        ok = ~(np.isnan(x) | np.isnan(y))
        s = None if strata is None else strata[sel_a][ok]
        # the stats functions test mean(first - second): B first, so that diff is B - A
        t = test(y[ok], x[ok], metric=m, n_resamples=n_resamples, seed=seed, strata=s)
        out.append(dataclasses.replace(t, mean_a=t.mean_b, mean_b=t.mean_a))
    return out, {
        "problems": problems,
        "n_common": len(common),
        "n_a": len(qa),
        "n_b": len(qb),
        "method": method,
    }
