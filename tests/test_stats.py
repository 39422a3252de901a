"""Tests for cirbench.core.stats: bootstrap intervals and paired significance tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from cirbench.core import stats
from cirbench.core.stats import PairedTest, bootstrap_ci, paired_bootstrap, paired_permutation

# ------------------------------------------------------------------------------------------------------------
# bootstrap_ci
# ------------------------------------------------------------------------------------------------------------


def test_ci_contains_mean_and_matches_normal_approximation() -> None:
    values = np.random.default_rng(0).normal(0.4, 0.2, size=400)
    lo, hi = bootstrap_ci(values, n_resamples=2000)
    mean = values.mean()
    assert lo < mean < hi
    # For a mean of 400 roughly normal values, the percentile interval is close to mean +/- 1.96 SE.
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert lo == pytest.approx(mean - half, abs=0.25 * half)
    assert hi == pytest.approx(mean + half, abs=0.25 * half)


def test_ci_on_binary_hits_contains_hit_rate() -> None:
    hits = (np.random.default_rng(1).random(1000) < 0.3).astype(float)  # per-query R@K values
    lo, hi = bootstrap_ci(hits)
    assert 0.0 <= lo < hits.mean() < hi <= 1.0


def test_ci_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(2)
    small = rng.random(50)
    large = rng.random(5000)
    w_small = np.subtract(*bootstrap_ci(small)[::-1])
    w_large = np.subtract(*bootstrap_ci(large)[::-1])
    assert w_large < w_small / 5  # width shrinks like 1/sqrt(n): sqrt(100) = 10


def test_ci_narrows_with_lower_confidence() -> None:
    values = np.random.default_rng(3).random(300)
    lo95, hi95 = bootstrap_ci(values, confidence=0.95)
    lo50, hi50 = bootstrap_ci(values, confidence=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_ci_is_deterministic_per_seed() -> None:
    values = np.random.default_rng(4).random(200)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_ci_is_deterministic_across_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    # Batching bounds memory; with one resample per batch the result must be the same interval.
    values = np.random.default_rng(5).random(100)
    whole = bootstrap_ci(values, n_resamples=300)
    monkeypatch.setattr(stats, "_BATCH", 1)
    lo, hi = bootstrap_ci(values, n_resamples=300)
    assert lo < values.mean() < hi
    assert (lo, hi) == whole


def test_ci_ignores_nan() -> None:
    values = np.random.default_rng(6).random(100)
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert bootstrap_ci(with_nan) == bootstrap_ci(values)


def test_ci_edge_cases() -> None:
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([np.nan])))
    assert bootstrap_ci(np.array([0.7])) == (0.7, 0.7)
    assert bootstrap_ci(np.full(10, 0.25)) == (0.25, 0.25)


def test_ci_median_with_infinite_ranks() -> None:
    # MedR per-query values use inf for misses; the median interval must stay defined (no NaN).
    ranks = np.array([1, 2, 2, 3, 5, 8, np.inf, np.inf, 4, 1], dtype=float)
    lo, hi = bootstrap_ci(ranks, statistic="median")
    assert not math.isnan(lo) and not math.isnan(hi)
    assert 1.0 <= lo <= np.median(ranks) <= hi


def test_ci_validation() -> None:
    values = np.ones(5)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(values, statistic="mode")
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(values, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(values, confidence=1.0)


# ------------------------------------------------------------------------------------------------------------
# Paired tests
# ------------------------------------------------------------------------------------------------------------

PairedFn = Callable[..., PairedTest]
PAIRED = (paired_bootstrap, paired_permutation)


@pytest.mark.parametrize("test", PAIRED)
def test_identical_inputs_give_p_one_and_zero_diff(test: PairedFn) -> None:
    a = (np.random.default_rng(10).random(300) < 0.4).astype(float)
    result = test(a, a.copy(), metric="R@1", n_resamples=2000)
    assert isinstance(result, PairedTest)
    assert result.metric == "R@1"
    assert result.diff == 0.0
    assert result.p_value == 1.0
    assert result.ci_low == 0.0 and result.ci_high == 0.0
    assert result.mean_a == result.mean_b == a.mean()
    assert result.n == 300


@pytest.mark.parametrize("test", PAIRED)
def test_clear_shift_gives_small_p(test: PairedFn) -> None:
    rng = np.random.default_rng(11)
    b = rng.random(500)
    a = b + 0.05 + rng.normal(0, 0.05, size=500)  # +0.05 on average, small per-query noise
    result = test(a, b, metric="mAP@10", n_resamples=2000)
    assert result.diff == pytest.approx((a - b).mean())
    assert result.mean_a - result.mean_b == pytest.approx(result.diff)
    assert result.p_value < 0.001
    assert result.p_value > 0.0  # Monte-Carlo p-values are never exactly 0
    assert 0.0 < result.ci_low < result.diff < result.ci_high


@pytest.mark.parametrize("test", PAIRED)
def test_direction_is_symmetric(test: PairedFn) -> None:
    rng = np.random.default_rng(12)
    a, b = rng.random(200), rng.random(200)
    ab, ba = test(a, b, n_resamples=1000), test(b, a, n_resamples=1000)
    assert ab.diff == pytest.approx(-ba.diff)
    assert ab.ci_low == pytest.approx(-ba.ci_high)
    assert ab.ci_high == pytest.approx(-ba.ci_low)


@pytest.mark.parametrize("test", PAIRED)
def test_paired_is_deterministic_per_seed(test: PairedFn) -> None:
    rng = np.random.default_rng(13)
    a, b = rng.random(100), rng.random(100)
    assert test(a, b, n_resamples=500, seed=3) == test(a, b, n_resamples=500, seed=3)


@pytest.mark.parametrize("test", PAIRED)
def test_paired_drops_nan_pairs_and_rejects_bad_input(test: PairedFn) -> None:
    a = np.array([0.5, np.nan, 1.0, 0.0, 1.0])
    b = np.array([0.5, 1.0, np.nan, 1.0, 0.0])
    result = test(a, b, n_resamples=100)
    assert result.n == 3
    assert result.mean_a == pytest.approx(0.5) and result.mean_b == pytest.approx(0.5)
    with pytest.raises(ValueError, match="aligned"):
        test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        test(np.array([1.0, np.inf]), np.array([1.0, 2.0]))
    empty = test(np.array([np.nan]), np.array([1.0]))
    assert empty.n == 0 and math.isnan(empty.p_value) and math.isnan(empty.diff)


@pytest.mark.parametrize("test", PAIRED)
def test_null_rejection_rate_is_calibrated(test: PairedFn) -> None:
    # Under H0 (exchangeable systems) a 5% test should reject about 5% of the time.
    rng = np.random.default_rng(14)
    rejections = 0
    trials = 150
    for i in range(trials):
        a, b = rng.random(60), rng.random(60)
        rejections += test(a, b, n_resamples=400, seed=i).p_value < 0.05
    assert rejections / trials < 0.12


def test_permutation_exact_small_n_hand_computed() -> None:
    # d = [1, 2, 3]: the 8 sign patterns give sums 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 twice -> p = 2/8.
    result = paired_permutation(np.array([1.0, 2.0, 3.0]), np.zeros(3), n_resamples=1000)
    assert result.method == "paired sign-flip permutation (exact)"
    assert result.p_value == 0.25
    assert result.diff == 2.0
    # A single query can never be significant under the sign-flip test: p = 2/2 = 1.
    assert paired_permutation(np.array([1.0]), np.array([0.0])).p_value == 1.0


def test_permutation_switches_to_monte_carlo() -> None:
    rng = np.random.default_rng(15)
    a, b = rng.random(30), rng.random(30)
    assert paired_permutation(a, b, n_resamples=1000).method == "paired sign-flip permutation (Monte Carlo)"


def test_bootstrap_p_value_uses_shift_method() -> None:
    # A difference of +1 on every query: every resampled mean difference is exactly 1, so no centred
    # resample reaches |diff| and the shift-method p-value is its floor, 1 / (n_resamples + 1); the
    # interval is the single point 1.
    a, b = np.ones(40), np.zeros(40)
    result = paired_bootstrap(a, b, n_resamples=999, seed=5)
    assert result.method == "paired bootstrap (shift method, two-sided)"
    assert result.p_value == pytest.approx(1 / 1000)
    assert (result.ci_low, result.ci_high) == (1.0, 1.0)
    # Half the queries +1, half -1: the observed mean difference is 0, every centred resample is at
    # least 0 away, so p = 1.
    d = np.array([1.0, -1.0] * 20)
    assert paired_bootstrap(d, np.zeros(40), n_resamples=999).p_value == 1.0


def test_bootstrap_interval_matches_the_analytic_standard_error() -> None:
    # Checked against the textbook, not against cirbench's resampler: for 0/1 values the bootstrap
    # distribution of the mean is Binomial(n, p)/n, so its 2.5% and 97.5% points are the binomial
    # quantiles (within a Monte-Carlo error of a few resamples).
    from scipy.stats import binom

    n, hits = 400, 120
    values = np.r_[np.ones(hits), np.zeros(n - hits)]
    lo, hi = bootstrap_ci(values, n_resamples=20000, seed=1)
    p = hits / n
    assert lo == pytest.approx(binom.ppf(0.025, n, p) / n, abs=0.006)
    assert hi == pytest.approx(binom.ppf(0.975, n, p) / n, abs=0.006)


# ------------------------------------------------------------------------------------------------------------
# Strata (FashionIQ: the headline is the mean of the categories' means)
# ------------------------------------------------------------------------------------------------------------


def test_stratified_mean_is_the_mean_of_the_strata() -> None:
    # dress: 3 queries, all hits; shirt: 1 query, a miss. Pooled 3/4, per-category mean (1 + 0) / 2.
    values = np.array([1.0, 1.0, 1.0, 0.0])
    strata = ["dress", "dress", "dress", "shirt"]
    assert stats.stratified_mean(values, None) == 0.75
    assert stats.stratified_mean(values, strata) == 0.5


def test_stratified_bootstrap_resamples_within_each_stratum() -> None:
    # Every stratum is constant (dress all 1, shirt all 0, toptee all 0.5) but of different sizes. Resampled
    # within its stratum, each stays constant, so the interval of the mean of the three is the single point
    # 0.5. A bootstrap that pooled the queries would move the category sizes and give a wide interval.
    values = np.r_[np.ones(30), np.zeros(10), np.full(5, 0.5)]
    strata = ["dress"] * 30 + ["shirt"] * 10 + ["toptee"] * 5
    assert bootstrap_ci(values, strata=strata, n_resamples=500) == (0.5, 0.5)
    lo, hi = bootstrap_ci(values, n_resamples=500)
    assert hi - lo > 0.1


def test_stratified_paired_tests() -> None:
    # B beats A by 1 on each of 2 dress queries and loses by 1 on the 1 shirt query: the per-category mean
    # difference a - b is (-1 + 1) / 2 = 0, the pooled one -1/3.
    a = np.array([0.0, 0.0, 1.0])
    b = np.array([1.0, 1.0, 0.0])
    strata = np.array(["dress", "dress", "shirt"])
    for test in PAIRED:
        r = test(a, b, strata=strata, n_resamples=64)
        assert r.diff == pytest.approx(0.0)
        assert r.mean_a == pytest.approx(0.5) and r.mean_b == pytest.approx(0.5)
        assert test(a, b, n_resamples=64).diff == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="one label per value"):
        paired_bootstrap(a, b, strata=["dress"])
