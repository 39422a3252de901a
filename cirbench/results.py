"""Results as data: every number of every result.json under some folders as one long pandas DataFrame.

The shape follows mteb's `load_results`: one row per (result, breakdown kind, group, metric), so a reader
filters and pivots with pandas instead of walking JSON::

    import cirbench
    df = cirbench.load_results("results")
    df[(df.group_kind == "overall") & (df.metric == "R@1")].pivot_table("value", "model", "task")

Values are fractions in [0, 1] as in result.json (MedR is a rank); `ci_low`/`ci_high` are the seeded 95%
bootstrap interval. Results without scores (unlabelled test splits) contribute no rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from cirbench.core.result import Result

COLUMNS = (
    "task",
    "split",
    "protocol",
    "model",
    "revision",
    "group_kind",
    "group",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "main_metric",
    "model_id",
    "dataset_revision",
    "limit",
    "cirbench_version",
    "path",
)
"""`revision` is the model's, `dataset_revision` the data's; `limit` is set for smoke runs (N queries)."""


def result_rows(result: Result) -> list[dict[str, object]]:
    """The long rows of one Result (overall first, then each breakdown kind in file order)."""
    base: dict[str, object] = {
        "task": result.task.get("name"),
        "split": result.task.get("split"),
        "protocol": result.protocol.get("name"),
        "model": result.model.get("name"),
        "revision": result.model.get("revision"),
        "main_metric": result.main_metric,
        "model_id": result.model.get("id"),
        "dataset_revision": result.task.get("revision"),
        "limit": result.task.get("limit"),
        "cirbench_version": result.cirbench_version,
        "path": str(result.path) if result.path is not None else None,
    }
    rows: list[dict[str, object]] = []
    for kind, groups in result.scores.items():
        for group, scores in groups.items():
            for metric, s in scores.items():
                rows.append({**base, "group_kind": kind, "group": group, "metric": metric, "value": s.value,
                             "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n})
    return rows


def results_frame(results: Iterable[Result]) -> pd.DataFrame:
    """The long table of already loaded Results, with stable column types."""
    frame = pd.DataFrame([row for r in results for row in result_rows(r)], columns=list(COLUMNS))
    for col in ("value", "ci_low", "ci_high"):
        frame[col] = frame[col].astype("float64")
    frame["n"] = frame["n"].astype("Int64")
    frame["limit"] = frame["limit"].astype("Int64")
    return frame


def load_results(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = "results",
    *,
    tasks: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    group_kinds: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every result.json under `paths` (files, or folders searched recursively) as one long DataFrame.

    The filters keep rows whose task / model / metric / group kind is in the given list. A path that does
    not exist, or a folder without any result.json, raises DatasetError naming it.
    """
    from cirbench.leaderboard.collect import find_result_files

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    results = [Result.read(f) for f in find_result_files([Path(p) for p in paths])]
    frame = results_frame(results)
    for col, keep in (("task", tasks), ("model", models), ("metric", metrics), ("group_kind", group_kinds)):
        if keep is not None:
            frame = frame[frame[col].isin(list(keep))]
    return frame.reset_index(drop=True)
