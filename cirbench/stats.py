"""Bootstrap confidence intervals and paired significance tests over per-query metric values.

CIR leaderboards differ by fractions of a point on a few thousand queries, so every comparison should
carry an interval and, between two systems scored on the same queries, a *paired* test. All functions
take per-query values (as returned by ``cirbench.metrics.per_query_metrics``), drop NaN (queries with no
defined value), and are deterministic for a given ``seed``.

Resampling is vectorised: an index (or sign) matrix is drawn in chunks of about ``_CHUNK_ELEMS`` entries,
so memory stays bounded for large query sets. The chunk size depends only on the number of queries, so
the same inputs and seed always give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedTest", "bootstrap_ci", "paired_bootstrap", "paired_permutation"]

_CHUNK_ELEMS = 1 << 22  # ~32 MiB of int64 indices per chunk
_MAX_EXACT_BITS = 16  # exact sign-flip enumeration up to 2**16 patterns (bounded memory)
_STATISTICS = ("mean", "median")


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


def _chunks(total: int, n: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _CHUNK_ELEMS // max(n, 1))
    for start in range(0, total, rows):
        yield start, min(total, start + rows)


def _resample(values: np.ndarray, statistic: str, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples,) statistic of bootstrap resamples (with replacement) of ``values``."""
    n = values.size
    out = np.empty(n_resamples, dtype=np.float64)
    for start, stop in _chunks(n_resamples, n):
        sample = values[rng.integers(0, n, size=(stop - start, n))]
        out[start:stop] = sample.mean(axis=1) if statistic == "mean" else np.median(sample, axis=1)
    return out


def _percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    q = [alpha / 2.0, 1.0 - alpha / 2.0]
    # Linear interpolation between two infinite order statistics gives NaN (MedR uses inf for misses),
    # so fall back to plain order statistics when any resampled value is infinite.
    if np.all(np.isfinite(stats)):
        lo, hi = np.quantile(stats, q, method="linear")
    else:
        lo, hi = np.quantile(stats, q, method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_ci(
    values: np.ndarray,
    *,
    statistic: str = "mean",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (or median) over queries; NaN values are ignored.

    Queries are the resampling unit because they are the independent draws; (NaN, NaN) when no value is left.
    """
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
    _check_params(n_resamples, confidence)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    return _percentile_interval(_resample(v, statistic, n_resamples, rng), confidence)


def _paired_diffs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aligned finite pairs: drop a query when either side is NaN; reject infinities (e.g. MedR misses)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned per query, got {a.size} and {b.size} values")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired tests compare means and need finite per-query values (MedR uses inf)")
    return a, b


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
) -> PairedTest:
    """Paired bootstrap of the mean per-query difference ``a - b``.

    Queries are resampled jointly, so the per-query correlation between the two systems is kept (this is
    what makes the test far more sensitive than comparing two unpaired intervals). The interval is the
    percentile interval of the resampled mean differences. The two-sided p-value uses the *shift method*
    (Efron & Tibshirani 1993, §16.4; Berg-Kirkpatrick et al. 2012): centring the resampled means on the
    observed difference approximates their distribution under H0 (no difference), and
    ``p = (#{|boot - diff| >= |diff|} + 1) / (n_resamples + 1)``. The +1 keeps p > 0, as a Monte-Carlo
    p-value should be; identical inputs give p = 1. With very few queries the resampled differences have
    almost no spread (a constant difference gives p = 1 / (n_resamples + 1) even for n = 1), so prefer
    ``paired_permutation`` there; it becomes exact for small n.
    """
    method = "paired bootstrap (shift method, two-sided)"
    _check_params(n_resamples, confidence)
    a, b = _paired_diffs(a, b)
    if a.size == 0:
        return _empty_test(metric, method)
    d = a - b
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    boot = _resample(d, "mean", n_resamples, rng)
    lo, hi = _percentile_interval(boot, confidence)
    extreme = np.count_nonzero(np.abs(boot - diff) >= abs(diff) - _tolerance(d))
    p = min((extreme + 1) / (n_resamples + 1), 1.0)
    return PairedTest(metric, float(a.mean()), float(b.mean()), diff, lo, hi, float(p), method, int(a.size))


def paired_permutation(
    a: np.ndarray,
    b: np.ndarray,
    *,
    metric: str = "",
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedTest:
    """Random sign-flip (paired permutation) test of the mean difference ``a - b``, two-sided.

    Under H0 the labels A/B are exchangeable within each query, so each difference's sign is a fair coin.
    When ``2**n <= n_resamples`` all sign patterns are enumerated and the p-value is exact; otherwise
    ``p = (#{|flipped mean| >= |observed mean|} + 1) / (n_resamples + 1)``. The permutation test gives no
    interval of its own, so ``ci_low``/``ci_high`` are the percentile bootstrap interval of the mean
    difference with the same seed.
    """
    _check_params(n_resamples, confidence)
    a, b = _paired_diffs(a, b)
    n = a.size
    exact = n <= _MAX_EXACT_BITS and 2**n <= n_resamples
    method = "paired sign-flip permutation (exact)" if exact else "paired sign-flip permutation (Monte Carlo)"
    if n == 0:
        return _empty_test(metric, method)
    d = a - b
    diff = float(d.mean())
    threshold = abs(diff) - _tolerance(d)
    if exact:
        patterns = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)
        signs = (patterns & 1) * 2 - 1
        p = int(np.count_nonzero(np.abs((signs * d).mean(axis=1)) >= threshold)) / 2**n
    else:
        rng = np.random.default_rng(seed)
        extreme = 0
        for start, stop in _chunks(n_resamples, n):
            signs = rng.integers(0, 2, size=(stop - start, n), dtype=np.int8) * 2 - 1
            extreme += int(np.count_nonzero(np.abs((signs * d).mean(axis=1)) >= threshold))
        p = (extreme + 1) / (n_resamples + 1)
    lo, hi = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return PairedTest(metric, float(a.mean()), float(b.mean()), diff, lo, hi, float(min(p, 1.0)), method, n)
