"""Is a row's number really below the table's best? Paired tests on the queries both runs scored.

The overall columns go through `cirbench.compare.compare_results`, exactly as `cirbench compare` would. A
per-category cell needs the same test on that category's queries only, so it re-reads the per-query values
from run.parquet (once per run) and applies the same paired bootstrap to the category's common queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cirbench.compare import compare_results
from cirbench.core.result import Result
from cirbench.core.scoring import breakdowns, per_query_values
from cirbench.core.stats import PairedTest, paired_bootstrap, paired_permutation
from cirbench.core.types import DatasetError


@dataclass(frozen=True)
class TieTest:
    """p-value of "this row equals the best" (None when no test could run, with the reason in `note`)."""

    p_value: float | None
    n: int = 0
    note: str = ""


@dataclass
class _PerQuery:
    ids: dict[str, int]
    values: dict[str, np.ndarray]
    groups: dict[str, list[list[str]]]


class PairedTester:
    """Caches run tables and overall comparisons, so a board costs one read per run file."""

    def __init__(self, *, n_resamples: int = 10000, seed: int = 0, method: str = "bootstrap") -> None:
        self.n_resamples, self.seed, self.method = n_resamples, seed, method
        self._overall: dict[tuple[int, int, str], PairedTest | str] = {}
        self._runs: dict[int, _PerQuery | str] = {}

    def describe(self) -> dict[str, Any]:
        name = ("paired bootstrap (shift method, two-sided)" if self.method == "bootstrap"
                else "paired sign-flip permutation")
        return {"test": name, "n_resamples": self.n_resamples, "seed": self.seed}

    def test(self, best: Result, other: Result, metric: str, kind: str = "overall",
             group: str | None = None) -> TieTest:
        for r in (best, other):
            path = r.run_path()
            if path is None or not path.is_file():
                return TieTest(None, note="untested: run.parquet is missing")
        if kind == "overall":
            found = self._overall_test(best, other, metric)
        else:
            found = self._group_test(best, other, metric, kind, group or "")
        if isinstance(found, str):
            return TieTest(None, note=f"untested: {found}")
        if found.n == 0 or found.p_value != found.p_value:
            return TieTest(None, note="untested: no common query with a defined value")
        return TieTest(float(found.p_value), n=found.n)

    def _overall_test(self, best: Result, other: Result, metric: str) -> PairedTest | str:
        key = (id(best), id(other), metric)
        if key not in self._overall:
            try:
                tests, _ = compare_results(best, other, method=self.method, n_resamples=self.n_resamples,
                                           seed=self.seed, metrics=[metric])
                self._overall[key] = tests[0]
            except (ValueError, KeyError) as e:  # DatasetError is a ValueError
                self._overall[key] = _reason(e)
        return self._overall[key]

    def _per_query(self, r: Result) -> _PerQuery | str:
        if id(r) not in self._runs:
            try:
                table = r.read_run()
                self._runs[id(r)] = _PerQuery(
                    ids={q: i for i, q in enumerate(table.column("query_id").to_pylist())},
                    values=per_query_values(table, r.protocol), groups=breakdowns(table, r.protocol))
            except (ValueError, KeyError) as e:
                self._runs[id(r)] = _reason(e)
        return self._runs[id(r)]

    def _group_test(self, best: Result, other: Result, metric: str, kind: str,
                    group: str) -> PairedTest | str:
        a, b = self._per_query(best), self._per_query(other)
        if isinstance(a, str):
            return a
        if isinstance(b, str):
            return b
        if kind not in a.groups or metric not in a.values or metric not in b.values:
            return f"the run file has no per-query {kind!r} or {metric!r}"
        members = [q for q, i in a.ids.items() if group in a.groups[kind][i] and q in b.ids]
        if not members:
            return "no common query in this group"
        x = a.values[metric][[a.ids[q] for q in members]]
        y = b.values[metric][[b.ids[q] for q in members]]
        ok = ~(np.isnan(x) | np.isnan(y))
        test = paired_bootstrap if self.method == "bootstrap" else paired_permutation
        try:
            return test(x[ok], y[ok], metric=metric, n_resamples=self.n_resamples, seed=self.seed)
        except ValueError as e:
            return _reason(e)


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if not isinstance(e, DatasetError) else f"unreadable run file: {text}"
