"""Tests for cirbench.core.metrics: hand-computed cases, brute-force references, and reference-code parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cirbench.core.metrics import (
    AP_NORMALISERS,
    MetricSpec,
    aggregate,
    average_precision_at_k,
    hit_matrix,
    parse_metric,
    per_query_metrics,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)


def run(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.int64)


def rel(*sets: list[int]) -> list[np.ndarray]:
    return [np.array(s, dtype=np.int64) for s in sets]


# ------------------------------------------------------------------------------------------------------------
# hit_matrix
# ------------------------------------------------------------------------------------------------------------


def test_hit_matrix_basic_and_padding() -> None:
    ranked = run([[5, 2, -1, -1], [0, 1, 2, 3]])
    hits = hit_matrix(ranked, rel([2, 7], [3]))
    assert hits.dtype == bool
    assert hits.tolist() == [[False, True, False, False], [False, False, False, True]]


def test_hit_matrix_padding_never_hits_even_with_id_zero() -> None:
    # id 0 is relevant; padding -1 must not alias to it (the key encoding masks padding).
    hits = hit_matrix(run([[-1, -1, 0]]), rel([0]))
    assert hits.tolist() == [[False, False, True]]


def test_hit_matrix_relevance_is_per_query() -> None:
    # id 3 is relevant only for query 1, id 1 only for query 0.
    hits = hit_matrix(run([[3, 1], [3, 1]]), rel([1], [3]))
    assert hits.tolist() == [[False, True], [True, False]]


def test_hit_matrix_duplicates_do_not_double_count() -> None:
    # A run should never list an id twice; if it does, only the first occurrence is a hit.
    ranked = run([[4, 4, 1, 4]])
    hits = hit_matrix(ranked, rel([4, 1]))
    assert hits.tolist() == [[True, False, True, False]]
    # hits-normalised AP@4 = (1/1 + 2/3) / 2 = 5/6, not (1 + 2/2 + 3/3 + 4/4) / 4 = 1.
    assert average_precision_at_k(hits, 4, np.array([2]), "hits")[0] == pytest.approx(5 / 6, abs=1e-15)


def test_hit_matrix_duplicate_relevant_ids_are_fine() -> None:
    hits = hit_matrix(run([[1, 2]]), rel([2, 2, 2]))
    assert hits.tolist() == [[False, True]]


def test_hit_matrix_validation() -> None:
    with pytest.raises(ValueError, match="entries"):
        hit_matrix(run([[1, 2]]), rel([1], [2]))
    with pytest.raises(ValueError, match="negative"):
        hit_matrix(run([[1, -2]]), rel([1]))
    with pytest.raises(ValueError, match="negative"):
        hit_matrix(run([[1, 2]]), rel([-1]))
    with pytest.raises(ValueError, match="2-D"):
        hit_matrix(np.array([1, 2]), rel([1]))
    with pytest.raises(ValueError, match="integer"):
        hit_matrix(np.array([[1.0, 2.0]]), rel([1]))


def test_hit_matrix_empty_shapes() -> None:
    assert hit_matrix(np.zeros((0, 5), dtype=np.int64), []).shape == (0, 5)
    assert hit_matrix(np.zeros((2, 0), dtype=np.int64), rel([1], [])).shape == (2, 0)
    assert hit_matrix(run([[-1, -1]]), rel([])).tolist() == [[False, False]]


# ------------------------------------------------------------------------------------------------------------
# Hand-computed metric values
# ------------------------------------------------------------------------------------------------------------

# One query, run of depth 5, relevant items at ranks 1 and 3.
HITS_1_3 = np.array([[True, False, True, False, False]])
# Summed precision at the relevant ranks: P@1 + P@3 = 1/1 + 2/3 = 5/3.


def test_ap_three_normalisers_small_gt() -> None:
    # |G| = 3: min(5, 3) = 3 -> (1 + 2/3) / 3 = 5/9 ; |G| = 3 -> 5/9 ; hits = 2 -> (1 + 2/3) / 2 = 5/6.
    n_rel = np.array([3])
    assert average_precision_at_k(HITS_1_3, 5, n_rel, "min(K,|G|)")[0] == pytest.approx(5 / 9, abs=1e-15)
    assert average_precision_at_k(HITS_1_3, 5, n_rel, "|G|")[0] == pytest.approx(5 / 9, abs=1e-15)
    assert average_precision_at_k(HITS_1_3, 5, n_rel, "hits")[0] == pytest.approx(5 / 6, abs=1e-15)


def test_ap_three_normalisers_all_differ_when_gt_exceeds_k() -> None:
    # |G| = 7 > K = 5: min(5, 7) = 5 -> (5/3) / 5 = 1/3 ; |G| -> (5/3) / 7 = 5/21 ; hits = 2 -> 5/6.
    n_rel = np.array([7])
    values = {norm: average_precision_at_k(HITS_1_3, 5, n_rel, norm)[0] for norm in AP_NORMALISERS}
    assert values["min(K,|G|)"] == pytest.approx(1 / 3, abs=1e-15)
    assert values["|G|"] == pytest.approx(5 / 21, abs=1e-15)
    assert values["hits"] == pytest.approx(5 / 6, abs=1e-15)
    assert len(set(values.values())) == 3


def test_ap_cut_at_k() -> None:
    # AP@2 only sees rank 1: min(2, 3) = 2 -> 1/2 ; |G| = 3 -> 1/3 ; hits = 1 -> 1.
    n_rel = np.array([3])
    assert average_precision_at_k(HITS_1_3, 2, n_rel, "min(K,|G|)")[0] == pytest.approx(1 / 2, abs=1e-15)
    assert average_precision_at_k(HITS_1_3, 2, n_rel, "|G|")[0] == pytest.approx(1 / 3, abs=1e-15)
    assert average_precision_at_k(HITS_1_3, 2, n_rel, "hits")[0] == pytest.approx(1.0, abs=1e-15)


def test_ap_perfect_top_k_with_many_gt_is_one_under_circo_only() -> None:
    # 10 GT, top 5 all relevant: CIRCO -> 5/5 = 1 ; trec/ranx -> 5/10 = 0.5 ; SoFT -> 1.
    hits = np.ones((1, 5), dtype=bool)
    n_rel = np.array([10])
    assert average_precision_at_k(hits, 5, n_rel, "min(K,|G|)")[0] == 1.0
    assert average_precision_at_k(hits, 5, n_rel, "|G|")[0] == 0.5
    assert average_precision_at_k(hits, 5, n_rel, "hits")[0] == 1.0


def test_ap_no_hit_is_zero_and_no_gt_is_nan() -> None:
    hits = np.zeros((2, 3), dtype=bool)
    for norm in AP_NORMALISERS:
        ap = average_precision_at_k(hits, 3, np.array([2, 0]), norm)
        assert ap[0] == 0.0
        assert math.isnan(ap[1])


def test_ap_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="normaliser"):
        average_precision_at_k(HITS_1_3, 5, np.array([3]), "bogus")
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision_at_k(HITS_1_3, 5, np.array([1]))  # 2 hits but only 1 relevant item
    with pytest.raises(ValueError, match="shape"):
        average_precision_at_k(HITS_1_3, 5, np.array([3, 3]))


def test_recall_precision_rr_hand_values() -> None:
    hits = np.array(
        [
            [False, False, True, False],  # first hit at rank 3
            [True, True, False, False],  # hits at ranks 1, 2
            [False, False, False, False],  # no hit
        ]
    )
    assert recall_at_k(hits, 1).tolist() == [0.0, 1.0, 0.0]
    assert recall_at_k(hits, 3).tolist() == [1.0, 1.0, 0.0]
    assert recall_at_k(hits, 3).dtype == np.float64
    assert precision_at_k(hits, 2).tolist() == [0.0, 1.0, 0.0]
    assert precision_at_k(hits, 4).tolist() == [0.25, 0.5, 0.0]
    assert reciprocal_rank(np.array([3, 1, 0])).tolist() == [1 / 3, 1.0, 0.0]
    with pytest.raises(ValueError, match="depth"):
        recall_at_k(hits, 5)
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(hits, 0)
    with pytest.raises(ValueError, match=">= 0"):
        reciprocal_rank(np.array([-1]))


# A CIRR-like toy: 2 queries, run of depth 6 (reference already removed), one target each.
CIRR_RANKED = run([[3, 0, 5, 1, 2, 4], [2, 4, 0, 1, 3, 5]])  # q0 target 1 at rank 4; q1 target 2 at rank 1
CIRR_REL = rel([1], [2])
CIRR_SUBSET = run([[5, 1, -1], [0, 2, -1]])  # subset runs: q0 target at subset rank 2, q1 at subset rank 2


def test_per_query_cirr_toy() -> None:
    out = per_query_metrics(
        ["R@1", "Recall@5", "R_s@1", "Rsubset@2", "Avg", "MRR", "MedR"],
        CIRR_RANKED,
        CIRR_REL,
        subset_ranked=CIRR_SUBSET,
    )
    assert list(out) == ["R@1", "R@5", "R_s@1", "R_s@2", "Avg", "MRR", "MedR"]
    assert out["R@1"].tolist() == [0.0, 1.0]
    assert out["R@5"].tolist() == [1.0, 1.0]
    assert out["R_s@1"].tolist() == [0.0, 0.0]
    assert out["R_s@2"].tolist() == [1.0, 1.0]
    assert out["Avg"].tolist() == [0.5, 0.5]  # (R@5 + R_s@1) / 2 = (1 + 0) / 2 per query
    assert out["MRR"].tolist() == [0.25, 1.0]  # 1/4, 1/1
    assert out["MedR"].tolist() == [4.0, 1.0]
    assert aggregate("R@1", out["R@1"]) == 0.5
    assert aggregate("MRR", out["MRR"]) == 0.625
    assert aggregate("MedR", out["MedR"]) == 2.5  # median of 4 and 1


def test_per_query_first_rank_beyond_k() -> None:
    # Depth-2 run; full-ranking first relevant ranks are 7, 2 and none.
    ranked = run([[0, 1], [5, 3], [8, 9]])
    relevant = rel([4], [3], [6])
    out = per_query_metrics(["MRR", "MedR", "R@2"], ranked, relevant, first_rank=np.array([7, 2, 0]))
    assert out["MRR"].tolist() == [1 / 7, 0.5, 0.0]
    assert out["MedR"].tolist() == [7.0, 2.0, math.inf]
    assert aggregate("MedR", out["MedR"]) == 7.0  # median of 2, 7, inf
    # Without first_rank, MRR is MRR@2 and misses are inf.
    out = per_query_metrics(["MRR", "MedR"], ranked, relevant)
    assert out["MRR"].tolist() == [0.0, 0.5, 0.0]
    assert out["MedR"].tolist() == [math.inf, 2.0, math.inf]
    assert aggregate("MedR", out["MedR"]) == math.inf


def test_per_query_map_normaliser_and_empty_relevance() -> None:
    # q0: hits at ranks 1 and 3 with |G| = 3.
    # q1: no relevant item at all -> NaN for every metric, so it is excluded from every mean.
    ranked = run([[10, 0, 11, 1, 2], [0, 1, 2, 3, 4]])
    relevant = rel([10, 11, 12], [])
    circo = per_query_metrics(["mAP@5", "R@1", "MRR", "P@5", "MedR"], ranked, relevant)
    assert circo["mAP@5"][0] == pytest.approx(5 / 9, abs=1e-15)
    for values in circo.values():
        assert math.isnan(values[1])
    assert aggregate("mAP@5", circo["mAP@5"]) == pytest.approx(5 / 9, abs=1e-15)
    assert aggregate("MedR", circo["MedR"]) == 1.0
    soft = per_query_metrics(["MAP@5"], ranked, relevant, ap_normaliser="hits")
    assert soft["mAP@5"][0] == pytest.approx(5 / 6, abs=1e-15)
    trec = per_query_metrics(["mAP@2"], ranked, relevant, ap_normaliser="|G|")
    assert trec["mAP@2"][0] == pytest.approx(1 / 3, abs=1e-15)


def test_per_query_errors() -> None:
    with pytest.raises(ValueError, match=r"R@10 .*depth 6"):
        per_query_metrics(["R@10"], CIRR_RANKED, CIRR_REL)
    with pytest.raises(ValueError, match=r"mAP@7 .*depth 6"):
        per_query_metrics(["mAP@7"], CIRR_RANKED, CIRR_REL)
    with pytest.raises(ValueError, match="subset_ranked"):
        per_query_metrics(["R_s@1"], CIRR_RANKED, CIRR_REL)
    with pytest.raises(ValueError, match="subset_ranked"):
        per_query_metrics(["Avg"], CIRR_RANKED, CIRR_REL)
    with pytest.raises(ValueError, match=r"R_s@4 .*depth 3"):
        per_query_metrics(["R_s@4"], CIRR_RANKED, CIRR_REL, subset_ranked=CIRR_SUBSET)
    with pytest.raises(ValueError, match=r"Avg .*depth 2"):
        per_query_metrics(["Avg"], CIRR_RANKED[:, :2], CIRR_REL, subset_ranked=CIRR_SUBSET)
    with pytest.raises(ValueError, match="queries"):
        per_query_metrics(["R_s@1"], CIRR_RANKED, CIRR_REL, subset_ranked=CIRR_SUBSET[:1])
    with pytest.raises(ValueError, match="first_rank"):
        per_query_metrics(["MRR"], CIRR_RANKED, CIRR_REL, first_rank=np.array([1]))
    with pytest.raises(ValueError, match="normaliser"):
        per_query_metrics(["mAP@5"], CIRR_RANKED, CIRR_REL, ap_normaliser="trec")
    with pytest.raises(ValueError, match="valid forms"):
        per_query_metrics(["nDCG@10"], CIRR_RANKED, CIRR_REL)


# ------------------------------------------------------------------------------------------------------------
# parse_metric / aggregate
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("R@5", MetricSpec("R@5", "recall", 5, "mean")),
        ("Recall@5", MetricSpec("R@5", "recall", 5, "mean")),
        ("recall@50", MetricSpec("R@50", "recall", 50, "mean")),
        ("R_s@1", MetricSpec("R_s@1", "recall_subset", 1, "mean")),
        ("Rsubset@1", MetricSpec("R_s@1", "recall_subset", 1, "mean")),
        ("Recall_subset@3", MetricSpec("R_s@3", "recall_subset", 3, "mean")),
        ("mAP@10", MetricSpec("mAP@10", "map", 10, "mean")),
        ("MAP@10", MetricSpec("mAP@10", "map", 10, "mean")),
        ("P@5", MetricSpec("P@5", "precision", 5, "mean")),
        ("MRR", MetricSpec("MRR", "mrr", None, "mean")),
        ("MedR", MetricSpec("MedR", "medr", None, "median")),
        ("Avg", MetricSpec("Avg", "avg", None, "mean")),
    ],
)
def test_parse_metric(text: str, expected: MetricSpec) -> None:
    assert parse_metric(text) == expected


@pytest.mark.parametrize("bad", ["R@0", "R@", "nDCG@10", "R@-1", "R@1.5", "", "Recall", "mAP"])
def test_parse_metric_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="valid forms") as info:
        parse_metric(bad)
    assert "R@k" in str(info.value) and "MedR" in str(info.value)


def test_aggregate() -> None:
    assert aggregate("R@1", np.array([1.0, 0.0, np.nan, 1.0])) == pytest.approx(2 / 3)
    assert math.isnan(aggregate("R@1", np.array([np.nan])))
    assert math.isnan(aggregate("MRR", np.array([])))
    assert aggregate("MedR", np.array([3.0, 1.0, 100.0, np.nan])) == 3.0
    assert isinstance(aggregate("mAP@5", np.array([0.5])), float)


# ------------------------------------------------------------------------------------------------------------
# Brute-force references written independently from the formulas (plain Python, lists and sets)
# ------------------------------------------------------------------------------------------------------------


def bf_hits(row: list[int], relevant: set[int]) -> list[bool]:
    seen: set[int] = set()
    out = []
    for item in row:
        out.append(item != -1 and item in relevant and item not in seen)
        seen.add(item)
    return out


def bf_recall(h: list[bool], k: int) -> float:
    return 1.0 if any(h[:k]) else 0.0


def bf_precision(h: list[bool], k: int) -> float:
    return sum(1 for x in h[:k] if x) / k


def bf_ap(h: list[bool], k: int, n_gt: int, normaliser: str) -> float:
    if n_gt == 0:
        return math.nan
    found = 0
    total = 0.0
    for j in range(k):
        if h[j]:
            found += 1
            total += found / (j + 1)
    norm = {"min(K,|G|)": min(k, n_gt), "|G|": n_gt, "hits": found}[normaliser]
    return total / norm if norm else 0.0


def bf_first_rank(full: list[int], relevant: set[int]) -> int:
    for j, item in enumerate(full):
        if item in relevant:
            return j + 1
    return 0


@st.composite
def evaluation_case(draw: st.DrawFn) -> dict:
    """Full rankings over random candidate lists, their padded top-K runs, relevance sets, subset runs."""
    n_corpus = draw(st.integers(1, 20))
    n_queries = draw(st.integers(1, 6))
    depth = draw(st.integers(1, 10))
    subset_depth = draw(st.integers(1, 4))
    ids = st.integers(0, n_corpus - 1)
    fulls, subsets, relevants = [], [], []
    for _ in range(n_queries):
        fulls.append(draw(st.lists(ids, unique=True, max_size=n_corpus)))
        subsets.append(draw(st.lists(ids, unique=True, max_size=subset_depth)))
        relevants.append(draw(st.sets(ids, max_size=n_corpus)))
    return {
        "fulls": fulls,
        "ranked": [f[:depth] + [-1] * (depth - len(f[:depth])) for f in fulls],
        "subset": [s + [-1] * (subset_depth - len(s)) for s in subsets],
        "relevant": relevants,
        "depth": depth,
        "subset_depth": subset_depth,
    }


def assert_same(actual: np.ndarray, expected: list[float]) -> None:
    """Equal to 1e-12, NaN matching NaN and inf matching inf (a lean np.testing.assert_allclose)."""
    exp = np.array(expected, dtype=np.float64)
    assert actual.shape == exp.shape and actual.dtype == np.float64
    with np.errstate(invalid="ignore"):
        ok = (actual == exp) | (np.abs(actual - exp) <= 1e-12) | (np.isnan(actual) & np.isnan(exp))
    assert ok.all(), f"{actual} != {exp}"


@settings(max_examples=200, deadline=None)
@given(evaluation_case(), st.sampled_from(AP_NORMALISERS), st.booleans())
def test_per_query_metrics_match_brute_force(case: dict, normaliser: str, use_first_rank: bool) -> None:
    depth, subset_depth = case["depth"], case["subset_depth"]
    ranked = np.array(case["ranked"], dtype=np.int64)
    subset = np.array(case["subset"], dtype=np.int64)
    relevant = [np.array(sorted(s), dtype=np.int64) for s in case["relevant"]]
    first_rank = np.array([bf_first_rank(f, r) for f, r in zip(case["fulls"], case["relevant"], strict=True)])

    names = [f"{m}@{k}" for k in range(1, depth + 1) for m in ("R", "P", "mAP")]
    names += [f"R_s@{k}" for k in range(1, subset_depth + 1)] + ["MRR", "MedR"]
    if depth >= 5:
        names.append("Avg")
    out = per_query_metrics(
        names,
        ranked,
        relevant,
        subset_ranked=subset,
        first_rank=first_rank if use_first_rank else None,
        ap_normaliser=normaliser,
    )

    hits = [bf_hits(row, r) for row, r in zip(case["ranked"], case["relevant"], strict=True)]
    sub_hits = [bf_hits(row, r) for row, r in zip(case["subset"], case["relevant"], strict=True)]
    n_gt = [len(r) for r in case["relevant"]]
    empty = [n == 0 for n in n_gt]

    def masked(values: list[float]) -> list[float]:
        return [math.nan if e else v for v, e in zip(values, empty, strict=True)]

    assert hit_matrix(ranked, relevant).tolist() == hits
    for k in range(1, depth + 1):
        assert_same(out[f"R@{k}"], masked([bf_recall(h, k) for h in hits]))
        assert_same(out[f"P@{k}"], masked([bf_precision(h, k) for h in hits]))
        assert_same(out[f"mAP@{k}"], [bf_ap(h, k, n, normaliser) for h, n in zip(hits, n_gt, strict=True)])
    for k in range(1, subset_depth + 1):
        assert_same(out[f"R_s@{k}"], masked([bf_recall(h, k) for h in sub_hits]))
    if use_first_rank:
        ranks = list(first_rank)
    else:  # from the run only: the first hit within the top `depth`
        ranks = [next((j + 1 for j, x in enumerate(h) if x), 0) for h in hits]
    assert_same(out["MRR"], masked([1.0 / r if r else 0.0 for r in ranks]))
    assert_same(out["MedR"], masked([float(r) if r else math.inf for r in ranks]))
    if depth >= 5:
        avg = [(bf_recall(h, 5) + bf_recall(s, 1)) / 2 for h, s in zip(hits, sub_hits, strict=True)]
        assert_same(out["Avg"], masked(avg))

    # Aggregates: plain mean / median over the answerable queries.
    kept = [i for i, e in enumerate(empty) if not e]
    if kept:
        r1 = [bf_recall(hits[i], 1) for i in kept]
        assert aggregate("R@1", out["R@1"]) == pytest.approx(sum(r1) / len(r1), abs=1e-12)
        medr = sorted(float(ranks[i]) if ranks[i] else math.inf for i in kept)
        mid = len(medr) // 2
        expected_med = medr[mid] if len(medr) % 2 else (medr[mid - 1] + medr[mid]) / 2
        assert aggregate("MedR", out["MedR"]) == expected_med
    else:
        assert math.isnan(aggregate("R@1", out["R@1"]))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_hit_matrix_with_duplicates_matches_brute_force(data: st.DataObject) -> None:
    n_corpus = data.draw(st.integers(1, 8))
    depth = data.draw(st.integers(1, 8))
    n_queries = data.draw(st.integers(1, 5))
    row = st.lists(st.integers(-1, n_corpus - 1), min_size=depth, max_size=depth)  # duplicates allowed
    rows = [data.draw(row) for _ in range(n_queries)]
    relevants = [data.draw(st.sets(st.integers(0, n_corpus - 1))) for _ in rows]
    hits = hit_matrix(
        np.array(rows, dtype=np.int64), [np.array(sorted(r), dtype=np.int64) for r in relevants]
    )
    assert hits.tolist() == [bf_hits(row, r) for row, r in zip(rows, relevants, strict=True)]
    for k in range(1, depth + 1):
        for norm in AP_NORMALISERS:
            ap = average_precision_at_k(hits, k, np.array([len(r) for r in relevants]), norm)
            expected = [
                bf_ap(bf_hits(row, r), k, len(r), norm) for row, r in zip(rows, relevants, strict=True)
            ]
            assert_same(ap, expected)


# ------------------------------------------------------------------------------------------------------------
# Parity with the published reference code's formulas
# ------------------------------------------------------------------------------------------------------------


def circo_compute_metrics_reference(
    predictions: list[list[int]], gts: list[list[int]], targets: list[int], ranks: list[int]
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """The per-query maths of miccunifi/CIRCO src/evaluation.py::compute_metrics, dataset access removed."""
    aps_atk: dict[int, list[float]] = {r: [] for r in ranks}
    recalls_atk: dict[int, list[float]] = {r: [] for r in ranks}
    for preds, gt_img_ids, target_img_id in zip(predictions, gts, targets, strict=True):
        predictions_arr = np.array(preds, dtype=int)
        ap_labels = np.isin(predictions_arr, gt_img_ids)
        precisions: np.ndarray = np.cumsum(ap_labels, axis=0) * ap_labels
        precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)
        for rank in ranks:
            aps_atk[rank].append(float(np.sum(precisions[:rank]) / min(len(gt_img_ids), rank)))
        recall_labels = predictions_arr == target_img_id
        for rank in ranks:
            recalls_atk[rank].append(float(np.sum(recall_labels[:rank])))
    return aps_atk, recalls_atk


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_circo_reference_parity(data: st.DataObject) -> None:
    n_corpus = data.draw(st.integers(12, 40))
    n_queries = data.draw(st.integers(1, 6))
    depth = 12  # stands in for CIRCO's top-50 submission
    ranks = [1, 5, 10, 12]
    ids = st.integers(0, n_corpus - 1)
    predictions = [
        data.draw(st.lists(ids, unique=True, min_size=depth, max_size=depth)) for _ in range(n_queries)
    ]
    gts = [data.draw(st.lists(ids, unique=True, min_size=1, max_size=15)) for _ in range(n_queries)]
    targets = [gt[0] for gt in gts]  # CIRCO's target_img_id is one of the GTs
    aps_ref, recalls_ref = circo_compute_metrics_reference(predictions, gts, targets, ranks)

    ranked = np.array(predictions, dtype=np.int64)
    names = [f"mAP@{r}" for r in ranks]
    out = per_query_metrics(names, ranked, [np.array(g, dtype=np.int64) for g in gts])
    recall_out = per_query_metrics(
        [f"R@{r}" for r in ranks], ranked, [np.array([t], dtype=np.int64) for t in targets]
    )
    for r in ranks:
        assert_same(out[f"mAP@{r}"], aps_ref[r])
        assert aggregate(f"mAP@{r}", out[f"mAP@{r}"]) == pytest.approx(float(np.mean(aps_ref[r])), abs=1e-12)
        assert_same(recall_out[f"R@{r}"], recalls_ref[r])


def searle_cirr_reference(
    sorted_index_names: np.ndarray,
    reference_names: np.ndarray,
    target_names: np.ndarray,
    group_members: np.ndarray,
    ks: list[int],
    subset_ks: list[int],
) -> tuple[dict[int, float], dict[int, float]]:
    """The maths of miccunifi/SEARLE src/validate.py::cirr_compute_val_metrics, in numpy instead of torch."""
    n_q, n_idx = sorted_index_names.shape
    reference_mask = sorted_index_names != np.repeat(reference_names, n_idx).reshape(n_q, -1)
    sorted_index_names = sorted_index_names[reference_mask].reshape(n_q, n_idx - 1)
    labels = sorted_index_names == np.repeat(target_names, n_idx - 1).reshape(n_q, -1)
    group_mask = (sorted_index_names[..., None] == group_members[:, None, :]).sum(-1).astype(bool)
    group_labels = labels[group_mask].reshape(n_q, -1)
    assert (labels.sum(-1) == 1).all() and (group_labels.sum(-1) == 1).all()
    recall = {k: float(labels[:, :k].any(1).mean()) for k in ks}
    group_recall = {k: float(group_labels[:, :k].any(1).mean()) for k in subset_ks}
    return recall, group_recall


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_searle_cirr_reference_parity(data: st.DataObject) -> None:
    n_corpus = data.draw(st.integers(8, 30))
    n_queries = data.draw(st.integers(1, 6))
    names = np.array([f"img{i:03d}" for i in range(n_corpus)])
    full_orders, refs, targets, members = [], [], [], []
    for _ in range(n_queries):
        order = data.draw(st.permutations(list(range(n_corpus))))
        img_set = data.draw(st.lists(st.integers(0, n_corpus - 1), unique=True, min_size=6, max_size=6))
        ref, target = img_set[0], data.draw(st.sampled_from(img_set[1:]))
        full_orders.append(order)
        refs.append(ref)
        targets.append(target)
        members.append([m for m in img_set if m != ref])  # the 5 candidates left after reference removal
    ks, subset_ks = [1, 5, 7], [1, 2, 3]
    recall_ref, group_ref = searle_cirr_reference(
        names[np.array(full_orders)], names[refs], names[targets], names[np.array(members)], ks, subset_ks
    )

    # cirbench inputs: the reference-removed top-7 run and the run restricted to each query's subset.
    removed = [[i for i in order if i != ref] for order, ref in zip(full_orders, refs, strict=True)]
    ranked = np.array([r[:7] for r in removed], dtype=np.int64)
    subset = np.array(
        [[i for i in r if i in set(m)] for r, m in zip(removed, members, strict=True)], dtype=np.int64
    )
    relevant = [np.array([t], dtype=np.int64) for t in targets]
    out = per_query_metrics(
        [f"R@{k}" for k in ks] + [f"R_s@{k}" for k in subset_ks] + ["Avg"],
        ranked,
        relevant,
        subset_ranked=subset,
    )
    for k in ks:
        assert aggregate(f"R@{k}", out[f"R@{k}"]) == pytest.approx(recall_ref[k], abs=1e-12)
    for k in subset_ks:
        assert aggregate(f"R_s@{k}", out[f"R_s@{k}"]) == pytest.approx(group_ref[k], abs=1e-12)
    assert aggregate("Avg", out["Avg"]) == pytest.approx((recall_ref[5] + group_ref[1]) / 2, abs=1e-12)


def test_vectorised_hit_matrix_scales() -> None:
    # A CIRR-val-sized run (top-50 over a 2,297-image gallery) must stay cheap and exact.
    rng = np.random.default_rng(0)
    ranked = np.argpartition(rng.random((1500, 2297)), 50, axis=1)[:, :50].astype(np.int64)
    relevant = [rng.integers(0, 2297, size=rng.integers(1, 5)) for _ in range(1500)]
    hits = hit_matrix(ranked, relevant)
    expected = np.array([np.isin(row, r) for row, r in zip(ranked, relevant, strict=True)])
    assert np.array_equal(hits, expected)
