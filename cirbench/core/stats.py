"""Bootstrap confidence intervals and paired significance tests over per-query metric values.

CIR leaderboards differ by fractions of a point on a few thousand queries, so every comparison should
carry an interval and, between two systems scored on the same queries, a *paired* test. All functions
take per-query values (as returned by ``cirbench.core.metrics.per_query_metrics``), drop NaN (queries with no
defined value), and are deterministic for a given ``seed``. The resampling itself is scipy's
(``scipy.stats.bootstrap``, ``scipy.stats.permutation_test``).

``strata`` (one label per query) makes the statistic the mean of the per-stratum statistics, as
FashionIQ's headline is the mean of its three categories: each stratum's queries are then resampled on
their own (a stratified bootstrap), so the interval reflects the benchmark's fixed category sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedTest", "bootstrap_ci", "paired_bootstrap", "paired_permutation", "stratified_mean"]

_STATISTICS = ("mean", "median")
_BATCH = 256
"""Resamples scipy draws at a time: bounds memory for large query sets."""


@dataclass(frozen=True)
class PairedTest:
    """Result of comparing system A with system B on the same queries (``diff = mean(a - b)``)."""

    metric: str
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    n: int


def _check_params(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_strata(strata: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray | None:
    if strata is None:
        return None
    s = np.asarray(strata, dtype=object).ravel()
    if s.size != n:
        raise ValueError(f"strata must give one label per value: {s.size} labels for {n} values")
    return s


def _groups(values: np.ndarray, strata: np.ndarray | None) -> list[np.ndarray]:
    """The values split by stratum (labels in sorted order); one group when there are no strata."""
    if strata is None:
        return [values]
    return [values[strata == label] for label in sorted(set(strata.tolist()), key=str)]


def _reduce(statistic: str) -> Callable[..., Any]:
    return np.mean if statistic == "mean" else np.median


def stratified_mean(values: np.ndarray, strata: Sequence[Any] | np.ndarray | None, statistic: str = "mean"
                    ) -> float:
    """The statistic over all values, or with strata the mean of the per-stratum statistics."""
    v = np.asarray(values, dtype=np.float64).ravel()
    groups = _groups(v, _check_strata(strata, v.size))
    reduce = _reduce(statistic)
    return float(np.mean([reduce(g) for g in groups if g.size]))


def _bootstrap(groups: list[np.ndarray], statistic: str, n_resamples: int, confidence: float, seed: int
               ) -> tuple[float, float, np.ndarray]:
    """Percentile interval and the bootstrap distribution of the (stratified) statistic.

    Each group is resampled on its own (``paired=False`` over several samples): that is the stratified
    bootstrap. A group of one value cannot vary, so it enters as a constant.
    """
    reduce = _reduce(statistic)
    varying = [g for g in groups if g.size > 1]
    fixed = [float(reduce(g)) for g in groups if g.size == 1]
    k = len(varying) + len(fixed)
    if not varying:
        value = float(np.mean(fixed))
        return value, value, np.full(n_resamples, value)

    def stat(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return (np.sum([reduce(s, axis=axis) for s in samples], axis=0) + sum(fixed)) / k

    with np.errstate(invalid="ignore"):  # inf - inf inside scipy for MedR's misses; handled below
        from scipy import stats as sps  # 1 s to import: only when intervals are asked for

        res = sps.bootstrap(tuple(varying), stat, n_resamples=n_resamples, batch=_BATCH, vectorized=True,
                            paired=False, confidence_level=confidence, method="percentile", rng=seed)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(lo) or np.isnan(hi):
        # MedR uses inf for misses; interpolating between two infinite order statistics gives NaN, so
        # fall back to plain order statistics of the same resamples.
        alpha = 1.0 - confidence
        lo, hi = (float(x) for x in np.quantile(dist, [alpha / 2, 1 - alpha / 2], method="inverted_cdf"))
    return lo, hi, dist


def bootstrap_ci(
    values: np.ndarray,
    *,
    statistic: str = "mean",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (or median) over queries; NaN values are ignored.

    Queries are the resampling unit because they are the independent draws; with ``strata`` they are
    resampled within their stratum and the statistic is the mean of the strata's. (NaN, NaN) when no
    value is left.
    """
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
    _check_params(n_resamples, confidence)
    v = np.asarray(values, dtype=np.float64).ravel()
    s = _check_strata(strata, v.size)
    keep = ~np.isnan(v)
    v = v[keep]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi, _ = _bootstrap(_groups(v, None if s is None else s[keep]), statistic, n_resamples, confidence,
                           seed)
    return lo, hi


def _paired_diffs(a: np.ndarray, b: np.ndarray, strata: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Aligned finite pairs: drop a query when either side is NaN; reject infinities (e.g. MedR misses)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned per query, got {a.size} and {b.size} values")
    s = _check_strata(strata, a.size)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired tests compare means and need finite per-query values (MedR uses inf)")
    return a, b, None if s is None else s[keep]


def _tolerance(d: np.ndarray) -> float:
    """Slack for treating two mathematically equal resampled statistics as a tie despite rounding."""
    return 1e-10 * max(1.0, float(np.max(np.abs(d)))) if d.size else 0.0


def _empty_test(metric: str, method: str) -> PairedTest:
    nan = float("nan")
    return PairedTest(metric, nan, nan, nan, nan, nan, nan, method, 0)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    metric: str = "",
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> PairedTest:
    """Paired bootstrap of the mean per-query difference ``a - b``.

    Queries are resampled jointly (their differences are), so the per-query correlation between the two
    systems is kept. The interval is the percentile interval of the resampled mean differences. The
    two-sided p-value uses the *shift method* (Efron & Tibshirani 1993, §16.4; Berg-Kirkpatrick et al.
    2012): centring the resampled means on the observed difference approximates their distribution under
    H0, and ``p = (#{|boot - diff| >= |diff|} + 1) / (n_resamples + 1)`` (identical inputs give p = 1).
    With very few queries the resampled differences have almost no spread, so prefer
    ``paired_permutation`` there. With ``strata`` the difference is the mean of the strata's mean
    differences and each stratum is resampled on its own.
    """
    method = "paired bootstrap (shift method, two-sided)" + (", stratified" if strata is not None else "")
    _check_params(n_resamples, confidence)
    a, b, s = _paired_diffs(a, b, None if strata is None else np.asarray(strata, dtype=object))
    if a.size == 0:
        return _empty_test(metric, method)
    d = a - b
    diff = stratified_mean(d, s)
    lo, hi, boot = _bootstrap(_groups(d, s), "mean", n_resamples, confidence, seed)
    extreme = np.count_nonzero(np.abs(boot - diff) >= abs(diff) - _tolerance(d))
    p = min((extreme + 1) / (n_resamples + 1), 1.0)
    return PairedTest(metric, stratified_mean(a, s), stratified_mean(b, s), diff, lo, hi, float(p), method,
                      int(a.size))


def paired_permutation(
    a: np.ndarray,
    b: np.ndarray,
    *,
    metric: str = "",
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> PairedTest:
    """Sign-flip (paired permutation) test of the mean difference ``a - b``, two-sided.

    Under H0 the labels A/B are exchangeable within each query, so each difference's sign is a fair coin
    (``scipy.stats.permutation_test``, ``permutation_type="samples"`` on the differences). When
    ``2**n <= n_resamples`` all sign patterns are enumerated and the p-value is exact; otherwise it is
    the Monte-Carlo estimate. The test gives no interval of its own, so ``ci_low``/``ci_high`` are the
    percentile bootstrap interval of the mean difference with the same seed. With ``strata`` the
    statistic is the mean of the strata's mean differences (each difference weighted by
    1 / (number of strata x its stratum's size)).
    """
    _check_params(n_resamples, confidence)
    a, b, s = _paired_diffs(a, b, None if strata is None else np.asarray(strata, dtype=object))
    n = a.size
    exact = 2**min(n, 62) <= n_resamples
    method = "paired sign-flip permutation (exact)" if exact else "paired sign-flip permutation (Monte Carlo)"
    if n == 0:
        return _empty_test(metric, method)
    d = a - b
    diff = stratified_mean(d, s)
    weighted = d * _stratum_weights(s, n)  # its plain mean is the stratified mean difference
    if n == 1:
        p = 1.0  # a single query can never be significant under sign flips: p = 2/2
    else:
        from scipy import stats as sps

        res = sps.permutation_test((weighted,), _mean, permutation_type="samples", vectorized=True,
                                   n_resamples=n_resamples, batch=_BATCH, alternative="two-sided", rng=seed)
        p = float(res.pvalue)
    lo, hi = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed, strata=s)
    return PairedTest(metric, stratified_mean(a, s), stratified_mean(b, s), diff, lo, hi,
                      float(min(p, 1.0)), method, n)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _stratum_weights(strata: np.ndarray | None, n: int) -> np.ndarray:
    if strata is None:
        return np.ones(n)
    labels, inverse, counts = np.unique(strata.astype(str), return_inverse=True, return_counts=True)
    return n / (len(labels) * counts[inverse])
