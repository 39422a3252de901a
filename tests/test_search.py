"""exact_search / subset_search against a brute-force numpy reference.

Most data are small integer vectors: their inner products are exact in float32 whatever the summation
order, so rankings can be compared bit for bit across chunk sizes and backends, and they are full of
exact ties (the hard part). Gaussian data check the realistic case and bf16.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cirbench.retrieval.search import SearchResult, exact_search, subset_search

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss not installed")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny blocks: threading only adds overhead (and is slow on a loaded CI box). Restored after."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def reference(
    q: np.ndarray,
    c: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    relevant: Sequence[Sequence[int]] | None = None,
    candidates: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full sort per query by (-score, position); the definition of the expected order."""
    s = q.astype(np.float64) @ c.astype(np.float64).T
    nq, n = s.shape
    idx = np.full((nq, k), -1, np.int64)
    val = np.full((nq, k), -np.inf, np.float32)
    frr = np.zeros(nq, np.int64)
    for r in range(nq):
        elig = np.zeros(n, bool)
        if candidates is None:
            elig[:] = True
        else:
            elig[list(candidates[r])] = True
        if exclude is not None:
            elig[list(exclude[r])] = False
        pos = np.flatnonzero(elig)
        ranked = pos[np.lexsort((pos, -s[r, pos]))]
        m = min(k, ranked.size)
        idx[r, :m] = ranked[:m]
        val[r, :m] = s[r, ranked[:m]]
        if relevant is not None:
            hit = np.flatnonzero(np.isin(ranked, list(relevant[r])))
            frr[r] = hit[0] + 1 if hit.size else 0
    return idx, val, frr


def int_data(seed: int, nq: int, n: int, d: int, lo: int = -1, hi: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.integers(lo, hi + 1, (nq, d)).astype(np.float32)
    c = rng.integers(lo, hi + 1, (n, d)).astype(np.float32)
    return q, c


def random_lists(seed: int, nq: int, n: int, most: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n, int(rng.integers(0, min(n, most) + 1)), replace=False).tolist() for _ in range(nq)]


def gaussian(seed: int, nq: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    c = rng.standard_normal((n, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return q, c


def assert_same(res: SearchResult, idx: np.ndarray, val: np.ndarray, frr: np.ndarray | None = None) -> None:
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_array_equal(res.scores, val)
    assert res.indices.dtype == np.int64 and res.scores.dtype == np.float32
    if frr is not None:
        assert res.first_relevant_rank is not None
        np.testing.assert_array_equal(res.first_relevant_rank, frr)


# chunk sizes that divide nothing (7, 13), single rows (1), and larger than the data
CHUNKS = [(1, 9), (7, 13), (13, 7), (64, 50), (1024, 65536)]


@pytest.mark.parametrize(("qc", "cc"), CHUNKS)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_matches_reference_with_ties_exclusions_and_ranks(qc: int, cc: int, k: int) -> None:
    q, c = int_data(0, 29, 101, 4)  # 3^4 = 81 distinct vectors for 101 items: many exact ties
    ex = random_lists(1, 29, 101, 4)
    rel = random_lists(2, 29, 101, 3)
    res = exact_search(q, c, k, exclude=ex, relevant=rel, query_chunk=qc, corpus_chunk=cc)
    assert_same(res, *reference(q, c, k, ex, rel))


def test_duplicated_gallery_ties_across_chunk_boundaries() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, (6, 5)).astype(np.float32)
    c = base[rng.integers(0, 6, 90)]  # every vector appears ~15 times, spread over all chunks
    q = rng.integers(-2, 3, (11, 5)).astype(np.float32)
    rel = random_lists(4, 11, 90, 2)
    expected = reference(q, c, 20, relevant=rel)
    for qc, cc in [(1, 4), (3, 7), (11, 16), (5, 90)]:
        res = exact_search(q, c, 20, relevant=rel, query_chunk=qc, corpus_chunk=cc)
        assert_same(res, *expected)
    # ties at the k boundary: the lowest positions win
    one = exact_search(np.ones((1, 2), np.float32), np.ones((50, 2), np.float32), 3, corpus_chunk=7)
    np.testing.assert_array_equal(one.indices, [[0, 1, 2]])


def test_all_equal_scores_worst_case() -> None:
    q, c = np.zeros((5, 3), np.float32), np.zeros((70, 3), np.float32)
    ex = [[0, 1], [], [69], [5, 6, 7], list(range(60))]
    rel = [[1, 2], [69], [68, 69], [5], [65, 3]]
    for qc, cc in [(2, 9), (5, 70)]:
        res = exact_search(q, c, 8, exclude=ex, relevant=rel, query_chunk=qc, corpus_chunk=cc)
        assert_same(res, *reference(q, c, 8, ex, rel))
    np.testing.assert_array_equal(res.first_relevant_rank, [1, 70, 69, 0, 6])


def test_k_larger_than_corpus_and_exclusions_pad() -> None:
    q, c = int_data(5, 4, 6, 3)
    ex = [[0], [], [0, 1, 2, 3, 4, 5], [2, 2, 2]]  # duplicates in an exclusion list are harmless
    res = exact_search(q, c, 9, exclude=ex, corpus_chunk=4)
    idx, val, _ = reference(q, c, 9, ex)
    assert_same(res, idx, val)
    assert (res.indices[0, 5:] == -1).all() and (res.indices[1, 6:] == -1).all()
    assert (res.indices[2] == -1).all() and np.isneginf(res.scores[2]).all()
    assert res.first_relevant_rank is None


def test_empty_queries_and_corpus() -> None:
    res = exact_search(np.zeros((0, 4), np.float32), np.ones((5, 4), np.float32), 3)
    assert res.indices.shape == (0, 3) and res.scores.shape == (0, 3)
    res = exact_search(np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32), 3, relevant=[[], []])
    assert (res.indices == -1).all()
    np.testing.assert_array_equal(res.first_relevant_rank, [0, 0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nq=st.integers(1, 9),
    n=st.integers(1, 40),
    d=st.integers(1, 3),
    k=st.integers(1, 45),
    qc=st.integers(1, 10),
    cc=st.integers(1, 45),
    seed=st.integers(0, 2**16),
)
def test_property_any_chunking(nq: int, n: int, d: int, k: int, qc: int, cc: int, seed: int) -> None:
    cc = max(cc, n // 6)  # keep the block count (and the test time) small
    q, c = int_data(seed, nq, n, d)
    ex = random_lists(seed + 1, nq, n, 3)
    rel = random_lists(seed + 2, nq, n, 3)
    res = exact_search(q, c, k, exclude=ex, relevant=rel, query_chunk=qc, corpus_chunk=cc)
    assert_same(res, *reference(q, c, k, ex, rel))


def test_first_relevant_rank_consistent_with_indices() -> None:
    q, c = gaussian(6, 40, 300, 16)
    rng = np.random.default_rng(7)
    rel = [rng.choice(300, 2, replace=False).tolist() for _ in range(40)]
    ex = [[int(r[0])] if i % 3 == 0 else [] for i, r in enumerate(rel)]  # sometimes excluded
    res = exact_search(q, c, 300, exclude=ex, relevant=rel, corpus_chunk=64)
    assert res.first_relevant_rank is not None
    for i in range(40):
        eligible = set(rel[i]) - set(ex[i])
        hits = [j for j, p in enumerate(res.indices[i]) if p in eligible]
        assert res.first_relevant_rank[i] == hits[0] + 1


def test_gaussian_matches_reference_and_is_chunk_invariant() -> None:
    q, c = gaussian(8, 70, 2000, 32)
    ex = random_lists(9, 70, 2000, 2)
    rel = random_lists(10, 70, 2000, 3)
    idx, val, frr = reference(q, c, 25, ex, rel)
    base = exact_search(q, c, 25, exclude=ex, relevant=rel)
    np.testing.assert_array_equal(base.indices, idx)
    np.testing.assert_allclose(base.scores, val, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(base.first_relevant_rank, frr)
    for qc, cc in [(1, 700), (33, 333), (70, 1999)]:  # GEMMs are padded: scores are bit-identical
        res = exact_search(q, c, 25, exclude=ex, relevant=rel, query_chunk=qc, corpus_chunk=cc)
        assert_same(res, base.indices, base.scores, base.first_relevant_rank)


def test_torch_and_float64_inputs() -> None:
    q, c = int_data(11, 9, 40, 3)
    expected = reference(q, c, 6)[:2]
    assert_same(exact_search(torch.from_numpy(q), torch.from_numpy(c), 6), *expected)
    assert_same(exact_search(q.astype(np.float64), c.astype(np.float64), 6), *expected)
    ro = c.copy()
    ro.setflags(write=False)  # e.g. a read-only memmap
    assert_same(exact_search(q, ro, 6, progress=True), *expected)


def test_bf16_close_to_fp32() -> None:
    q, c = gaussian(12, 64, 3000, 64)
    exact = exact_search(q, c, 10)
    approx = exact_search(q, c, 10, dtype="bfloat16", corpus_chunk=1000)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.indices, approx.indices, strict=True)])
    assert overlap > 0.8
    assert approx.scores.dtype == np.float32
    assert np.all(np.diff(approx.scores, axis=1) <= 0)
    # coarse bf16 scores tie a lot: the order must still be (score desc, position asc)
    s, i = approx.scores, approx.indices
    same = s[:, 1:] == s[:, :-1]
    assert np.all(i[:, 1:][same] > i[:, :-1][same])


@needs_faiss
@pytest.mark.parametrize("qc", [5, 1024])
def test_faiss_equals_torch(qc: int) -> None:
    q, c = int_data(13, 45, 120, 4)
    ex = random_lists(14, 45, 120, 5)
    rel = random_lists(15, 45, 120, 2)
    for k in (1, 7, 130):
        want = exact_search(q, c, k, exclude=ex, relevant=rel)
        got = exact_search(q, c, k, exclude=ex, relevant=rel, backend="faiss", query_chunk=qc)
        assert_same(got, want.indices, want.scores, want.first_relevant_rank)
    auto = exact_search(q, c, 7, exclude=ex, backend="auto")
    assert_same(auto, *reference(q, c, 7, ex)[:2])


@needs_faiss
def test_faiss_gaussian_close_to_torch() -> None:
    q, c = gaussian(16, 50, 2000, 32)
    a = exact_search(q, c, 20)
    b = exact_search(q, c, 20, backend="faiss")
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert (a.indices == b.indices).mean() > 0.99


def test_subset_search() -> None:
    q, c = int_data(17, 30, 60, 3)
    rng = np.random.default_rng(18)
    cand = [rng.choice(60, int(rng.integers(0, 8)), replace=False).tolist() for _ in range(30)]
    ex = [[x[0]] if x and i % 2 else [] for i, x in enumerate(cand)]
    for k in (1, 3, 10):
        res = subset_search(q, c, cand, k, exclude=ex)
        idx, val, _ = reference(q, c, k, ex, candidates=cand)
        assert_same(res, idx, val)
        assert res.first_relevant_rank is None


def test_subset_search_cirr_example_and_consistency_with_full_ranking() -> None:
    q, c = gaussian(19, 1, 10, 8)
    res = subset_search(q, c, [[2, 4, 6, 8, 9]], 3, exclude=[[4]])  # reference image 4 is in its set
    assert 4 not in res.indices[0] and (res.indices[0] >= 0).all()
    full = exact_search(q, c, 10, exclude=[[4]])
    order = [p for p in full.indices[0] if p in {2, 6, 8, 9}]
    np.testing.assert_array_equal(res.indices[0], order[:3])
    np.testing.assert_array_equal(
        res.scores[0], [full.scores[0][list(full.indices[0]).index(p)] for p in order[:3]]
    )
    padded = subset_search(q, c, [[2, 4, 6, 8, 9]], 6, exclude=[[4]])
    assert list(padded.indices[0, 4:]) == [-1, -1] and np.isneginf(padded.scores[0, 4:]).all()


def test_errors() -> None:
    q, c = np.ones((2, 4), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="queries have width 3 but corpus has width 4"):
        exact_search(np.ones((2, 3), np.float32), c, 1)
    with pytest.raises(ValueError, match="k must be"):
        exact_search(q, c, 0)
    with pytest.raises(ValueError, match=r"exclude\[1\] \(query 1\) contains index 5"):
        exact_search(q, c, 1, exclude=[[0], [5]])
    with pytest.raises(ValueError, match=r"relevant\[0\] \(query 0\) contains index -1"):
        exact_search(q, c, 1, relevant=[[-1], []])
    with pytest.raises(ValueError, match="one entry per query"):
        exact_search(q, c, 1, exclude=[[0]])
    with pytest.raises(ValueError, match="queries must be 2-D"):
        exact_search(np.ones(4, np.float32), c, 1)
    with pytest.raises(ValueError, match="corpus must be 2-D"):
        exact_search(q, np.ones((1, 5, 4), np.float32), 1)
    bad = c.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="corpus contain NaN or inf .first at row 3"):
        exact_search(q, bad, 1)
    with pytest.raises(ValueError, match="queries contain NaN"):
        exact_search(torch.tensor([[1.0, float("inf"), 0, 0]]), c, 1)
    with pytest.raises(ValueError, match="dtype"):
        exact_search(q, c, 1, dtype="float16")
    with pytest.raises(ValueError, match="backend"):
        exact_search(q, c, 1, backend="annoy")
    with pytest.raises(ValueError, match="faiss"):
        exact_search(q, c, 1, backend="faiss", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"candidates\[0\] \(query 0\) contains index 9"):
        subset_search(q, c, [[9], []], 1)
    with pytest.raises(ValueError, match="width"):
        subset_search(q, np.ones((5, 2), np.float32), [[1], []], 1)


def test_vectorised_tie_count_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU code path for ties before a relevant item, exercised on CPU."""
    import cirbench.retrieval.search as search

    monkeypatch.setattr(search, "_PER_ROW_TIES_ON_CPU", False)
    q, c = int_data(20, 23, 150, 3)
    rel = random_lists(21, 23, 150, 2)
    ex = random_lists(22, 23, 150, 3)
    for cc in (16, 150):
        res = exact_search(q, c, 4, exclude=ex, relevant=rel, corpus_chunk=cc)
        assert_same(res, *reference(q, c, 4, ex, rel))


def test_torch_mm_path_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where oneDNN's GEMM is unavailable, torch.mm computes the blocks: the same exact rankings."""
    import cirbench.retrieval.search as search

    monkeypatch.setattr(search, "_onednn", lambda: False)
    q, c = int_data(0, 29, 101, 4)
    ex, rel = random_lists(1, 29, 101, 4), random_lists(2, 29, 101, 3)
    for qc, cc in [(1, 9), (13, 7), (1024, 65536)]:
        res = exact_search(q, c, 5, exclude=ex, relevant=rel, query_chunk=qc, corpus_chunk=cc)
        assert_same(res, *reference(q, c, 5, ex, rel))


@needs_faiss
@pytest.mark.parametrize("ties", [0, 1, 2, 6])
def test_faiss_boundary_ties_and_no_needless_torch_pass(monkeypatch: pytest.MonkeyPatch, ties: int) -> None:
    """`ties` extra items share the k-th score, the tied items spread over the gallery; faiss fetches one
    item more than it keeps, so only a row whose k-th score is shared beyond that goes back to torch, and
    the lowest positions win every tie."""
    import cirbench.retrieval.search as search

    k, n = 4, 60
    c = np.zeros((n, 2), np.float32)
    c[:, 0] = -np.arange(n, dtype=np.float32) / 64 - 1  # distinct, decreasing, exact in float32
    best = [50, 7, 33]  # the top k - 1, out of position order
    c[best, 0] = [4.0, 3.0, 2.0]
    tied = [45, 12, 58, 3, 29, 40, 21][: ties + 1]  # the k-th score, shared by `ties` more items
    c[tied, 0] = 1.0
    q = np.array([[1.0, 0.0]] * 3, np.float32)
    calls: list[int] = []
    real = search._torch_engine

    def spy(queries, *args, **kw):  # type: ignore[no-untyped-def]
        calls.append(int(queries.shape[0]))
        return real(queries, *args, **kw)

    monkeypatch.setattr(search, "_torch_engine", spy)
    res = exact_search(q, c, k, backend="faiss")
    assert_same(res, *reference(q, c, k)[:2])
    np.testing.assert_array_equal(res.indices[0], [*best, min(tied)])
    assert calls == ([3] if ties >= 1 else [])  # with one more fetched, a lone k-th score is unambiguous
