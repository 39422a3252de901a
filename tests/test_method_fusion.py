"""The fusion algebra against scores worked out by hand (the numbers in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from cirbench.retrieval.methods.fusion import (
    RRF,
    MeanOver,
    MinMax,
    Product,
    Scores,
    Sim,
    Vec,
    VecSum,
    Weighted,
    rows,
    scores,
)

GALLERY = {"img": np.array([[1.0, 0.0], [0.0, 1.0]])}
QUERY = {"a": np.array([[3.0, 4.0]]), "b": np.array([[1.0, 0.0]])}


@pytest.mark.parametrize(
    ("normalize_each", "normalize_sum", "expected"),
    [
        # 0.5*[0.6, 0.8] + 0.5*[1, 0] = [0.8, 0.4]
        (True, False, [0.8, 0.4]),
        # [0.8, 0.4] / sqrt(0.8) = [0.894427, 0.447214]
        (True, True, [0.894427191, 0.447213595]),
        # 0.5*[3, 4] + 0.5*[1, 0] = [2, 2]
        (False, False, [2.0, 2.0]),
        # [2, 2] / sqrt(8)
        (False, True, [0.707106781, 0.707106781]),
    ],
)
def test_weighted_vector_sum_normalise_before_and_after(
    normalize_each: bool, normalize_sum: bool, expected: list[float]
) -> None:
    q = VecSum(((0.5, Vec("a")), (0.5, Vec("b"))), normalize_each=normalize_each, normalize_sum=normalize_sum)
    s = scores(Sim(q, Vec("img")), QUERY, GALLERY)
    np.testing.assert_allclose(s, [expected], atol=1e-8)


def test_mean_over_lists_of_text_vectors() -> None:
    # row 0: [1, 0] and [0, 2]; row 1: [3, 4] alone; ragged lists are allowed
    texts = {"rewrites": [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 4.0]])]}
    # normalised each: mean([1,0],[0,1]) = [0.5, 0.5] -> unit [0.7071, 0.7071]; row 1: [0.6, 0.8]
    s = scores(Sim(MeanOver("rewrites"), Vec("img")), texts, GALLERY)
    np.testing.assert_allclose(s, [[0.707106781, 0.707106781], [0.6, 0.8]], atol=1e-8)
    # raw mean, not normalised: [0.5, 1.0]; [3, 4]
    raw = MeanOver("rewrites", normalize_each=False, normalize_result=False)
    np.testing.assert_allclose(scores(Sim(raw, Vec("img")), texts, GALLERY), [[0.5, 1.0], [3.0, 4.0]])
    # an (n, m, d) array works the same as a list of (m, d) arrays
    dense = {"rewrites": np.array([[[1.0, 0.0], [0.0, 2.0]]])}
    np.testing.assert_allclose(scores(Sim(raw, Vec("img")), dense, GALLERY), [[0.5, 1.0]])


def test_reciprocal_rank_fusion_k60() -> None:
    runs = {"r1": np.array([[0.9, 0.5, 0.1]]), "r2": np.array([[0.2, 0.8, 0.4]])}
    # ranks r1: 1, 2, 3; r2: 3, 1, 2
    # item 0: 1/61 + 1/63 = 0.0322664; item 1: 1/62 + 1/61 = 0.0325225; item 2: 1/63 + 1/62 = 0.0320020
    s = scores(RRF((Scores("r1"), Scores("r2"))), runs, {})
    np.testing.assert_allclose(s, [[0.03226646, 0.03252247, 0.03200205]], atol=1e-8)
    # depth 2: rank 3 adds nothing. item 0: 1/61; item 1: 1/62 + 1/61; item 2: 1/62
    s2 = scores(RRF((Scores("r1"), Scores("r2")), k=60, depth=2), runs, {})
    np.testing.assert_allclose(s2, [[0.01639344, 0.03252247, 0.01612903]], atol=1e-8)
    # a tie is ranked by position: [0.5, 0.5] -> ranks 1, 2 with k = 1: [1/2, 1/3]
    tie = scores(RRF((Scores("t"),), k=1), {"t": np.array([[0.5, 0.5]])}, {})
    np.testing.assert_allclose(tie, [[0.5, 1 / 3]])


def test_minmax_product_and_weighted() -> None:
    feats = {"s": np.array([[2.0, 4.0, 6.0], [1.0, 1.0, 1.0]]),
             "count": np.array([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])}
    # row 0 -> [0, 0.5, 1]; a constant row -> 0
    np.testing.assert_allclose(scores(MinMax(Scores("s")), feats, {}), [[0, 0.5, 1], [0, 0, 0]])
    # count x minmax(s): [0, 1, 3]; [0, 0, 0]
    np.testing.assert_allclose(scores(Product(Scores("count"), MinMax(Scores("s"))), feats, {}),
                               [[0, 1, 3], [0, 0, 0]])
    # 0.25*s + 0.75*count: [0.5+0.75, 1+1.5, 1.5+2.25]; [0.25+1.5, 0.25, 0.25+0.75]
    w = Weighted(((0.25, Scores("s")), (0.75, Scores("count"))))
    np.testing.assert_allclose(scores(w, feats, {}), [[1.25, 2.5, 3.75], [1.75, 0.25, 1.0]])


def test_paracosm_as_data() -> None:
    """0.3 * <norm(V(I_m) + T(t_q)), phi> + 0.7 * <T(t_mod), phi>, phi = V(I) + V(I_syn) (not normalised)."""
    q = {"img_m": np.array([[1.0, 0.0]]), "t_q": np.array([[0.0, 1.0]]), "t_mod": np.array([[0.6, 0.8]])}
    g = {"img": np.array([[1.0, 0.0], [0.0, 1.0]]), "img_syn": np.array([[1.0, 0.0], [1.0, 0.0]])}
    phi = VecSum(((1.0, Vec("img")), (1.0, Vec("img_syn"))), normalize_each=False, normalize_sum=False)
    mixed = VecSum(((1.0, Vec("img_m")), (1.0, Vec("t_q"))), normalize_each=False, normalize_sum=True)
    expr = Weighted(((0.3, Sim(mixed, phi)), (0.7, Sim(Vec("t_mod"), phi))))
    # phi = [2, 0], [1, 1]; mixed = [0.7071, 0.7071]: term 1 = 1.41421 for both
    # term 2 = 1.2, 1.4 -> 0.3*1.41421 + 0.7*1.2 = 1.264264; 0.424264 + 0.98 = 1.404264
    np.testing.assert_allclose(scores(expr, q, g), [[1.26426407, 1.40426407]], atol=1e-8)
    rec = expr.record()
    assert rec["op"] == "weighted" and rec["terms"][0][1]["query"]["normalize_sum"] is True


def test_blocks_of_query_rows_score_like_the_whole_set() -> None:
    rng = np.random.default_rng(0)
    q = {"t": rng.normal(size=(5, 4)), "lists": rng.normal(size=(5, 3, 4))}
    g = {"img": rng.normal(size=(7, 4))}
    expr = RRF((Sim(Vec("t", True), Vec("img", True)), MinMax(Sim(MeanOver("lists"), Vec("img", True)))))
    whole = scores(expr, q, g)
    parts = np.concatenate([scores(expr, rows(q, slice(0, 2)), g), scores(expr, rows(q, [2, 3, 4]), g)])
    np.testing.assert_array_equal(whole, parts)


def test_bad_inputs_name_the_feature() -> None:
    with pytest.raises(KeyError, match="'missing'.*given: a, b"):
        scores(Sim(Vec("missing"), Vec("img")), QUERY, GALLERY)
    with pytest.raises(ValueError, match="3-d but gallery vectors 2-d"):
        scores(Sim(Vec("x"), Vec("img")), {"x": np.ones((1, 3))}, GALLERY)
    with pytest.raises(ValueError, match="use MeanOver"):
        scores(Sim(Vec("x"), Vec("img")), {"x": np.ones((1, 2, 2))}, GALLERY)
