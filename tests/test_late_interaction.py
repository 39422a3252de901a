"""Late-interaction scoring (CoVR's CIRR scorer for BLIP-2): max over token pairs, ranked as exact search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cirbench.retrieval import late_interaction as li


def test_max_over_token_pairs_by_hand() -> None:
    q = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # one query, two tokens
    g = np.array([[[0.6, 0.8], [-1.0, 0.0]],  # pairs: .6, -1, .8, 0  -> .8
                  [[0.5, 0.5], [0.0, 0.2]]])  # pairs: .5, 0, .5, .2  -> .5
    np.testing.assert_allclose(li.maxsim_scores(q, g), [[0.8, 0.5]], atol=1e-7)


def test_chunked_scores_equal_a_loop_over_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 3, 5)), rng.normal(size=(11, 4, 5))
    want = np.array([[max(float(a @ b) for a, b in itertools.product(qi, gj)) for gj in g] for qi in q])
    monkeypatch.setattr(li, "_PAIR_BUDGET", 40)  # forces many row and column chunks
    np.testing.assert_allclose(li.maxsim_scores(q, g), want, rtol=1e-5, atol=1e-6)


def test_mismatched_token_dims_are_refused() -> None:
    with pytest.raises(ValueError, match="one dim"):
        li.maxsim_scores(np.zeros((1, 2, 3)), np.zeros((1, 2, 4)))


def test_ranking_ties_exclusions_first_rank_and_subset() -> None:
    s = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]], dtype=np.float32)
    res = li.rank_scores(s, 4, exclude=[[1]], relevant=[[2, 3]])
    # eligible: 0 (.5), 2 (.5), 3 (.1), 4 (.9); order 4, 0, 2, 3 (tie .5 -> lower position first)
    assert res.indices.tolist() == [[4, 0, 2, 3]]
    assert res.first_relevant_rank is not None and res.first_relevant_rank.tolist() == [3]
    sub = li.rank_scores(s, 3, exclude=[[1]], candidates=[[1, 2, 3, 4]])
    assert sub.indices.tolist() == [[4, 2, 3]]  # 1 excluded, 0 not a candidate
    short = li.rank_scores(s, 3, candidates=[[3]])
    assert short.indices.tolist() == [[3, -1, -1]] and np.isneginf(short.scores[0, 1:]).all()
