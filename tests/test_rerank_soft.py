"""SoFT soft filtering: hand-computed finals and orders, constraint files, reward/penalty from an encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cirbench.core.run import Run
from cirbench.core.types import DatasetError
from cirbench.models.base import Batch, ModelSpec
from cirbench.retrieval.rerank import (
    Constraint,
    constraint_scores,
    load_constraints,
    rerank_run,
    rerank_topk,
    soft_protocol,
    soft_scores,
)

# One query, candidates 3, 1, 4 (best first by s) and a pad.
IDX = np.array([[3, 1, 4, -1]])
S = np.array([[0.9, 0.8, 0.7, -np.inf]])
R = np.array([[0.1, 0.5, 0.9, 0.0]])
P = np.array([[0.6, 0.1, 0.0, 0.0]])


@pytest.mark.parametrize(("mode", "lam", "finals", "order"), [
    # soft, λ=1: s(1+r-p)/2 = .9*.5/2, .8*1.4/2, .7*1.9/2
    ("soft", 1.0, [0.225, 0.56, 0.665], [4, 1, 3]),
    # soft, λ=.5: .5s + .5·soft
    ("soft", 0.5, [0.5625, 0.68, 0.6825], [4, 1, 3]),
    # reward: s·r
    ("reward", 1.0, [0.09, 0.4, 0.63], [4, 1, 3]),
    ("reward", 0.5, [0.495, 0.6, 0.665], [4, 1, 3]),
    # penalty: s(1-p) = .9*.4, .8*.9, .7*1
    ("penalty", 1.0, [0.36, 0.72, 0.7], [1, 4, 3]),
    # SoFT's released script for "penalty": s·p
    ("penalty-as-coded", 1.0, [0.54, 0.08, 0.0], [3, 1, 4]),
    # λ = 0 leaves the base ranking alone
    ("soft", 0.0, [0.9, 0.8, 0.7], [3, 1, 4]),
])
def test_hand_computed_finals_and_order(mode: str, lam: float, finals: list[float], order: list[int]) -> None:
    got = soft_scores(S[:, :3], R[:, :3], P[:, :3], lam=lam, mode=mode)
    np.testing.assert_allclose(got[0], finals, rtol=0, atol=1e-12)
    idx, sc = rerank_topk(IDX, S, R, P, lam=lam, mode=mode)
    assert idx[0].tolist() == [*order, -1]  # the pad stays last
    by_id = dict(zip([3, 1, 4], finals, strict=True))
    np.testing.assert_allclose(sc[0, :3], [by_id[i] for i in order], atol=1e-12)
    assert sc[0, 3] == -np.inf


def test_ties_keep_the_incoming_order() -> None:
    # .75·(1+0-0)/2 = .375 and .5·(1+.5-0)/2 = .375 exactly: the earlier candidate stays first.
    s, r, p = np.array([[0.75, 0.5, 0.25]]), np.array([[0.0, 0.5, 0.0]]), np.zeros((1, 3))
    idx, sc = rerank_topk(np.array([[7, 2, 9]]), s, r, p)
    assert idx.tolist() == [[7, 2, 9]] and sc[0, 0] == sc[0, 1] == 0.375
    idx, _ = rerank_topk(np.array([[2, 7, 9]]), s[:, [1, 0, 2]], r[:, [1, 0, 2]], p)
    assert idx.tolist() == [[2, 7, 9]]
    # deterministic: the same input always gives the same output
    a = rerank_topk(IDX, S, R, P, mode="soft")
    b = rerank_topk(IDX, S, R, P, mode="soft")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_bad_mode_lambda_and_values() -> None:
    with pytest.raises(ValueError, match="mode"):
        soft_scores(S, R, P, mode="hard")
    with pytest.raises(ValueError, match="lambda"):
        soft_scores(S, R, P, lam=1.5)
    with pytest.raises(ValueError, match="finite"):
        rerank_topk(IDX, S, np.array([[np.nan, 0, 0, 0]]), P)
    with pytest.raises(ValueError, match="shape"):
        soft_scores(S, R[:, :2], P)


def _run() -> Run:
    # q0: ranking 3,1,4 (relevant {4}: first rank 3); q1: ranking 0,2,1 (relevant {5}: beyond K, rank 9)
    return Run(query_ids=["q0", "q1"], corpus_ids=[f"c{i}" for i in range(6)],
               indices=np.array([[3, 1, 4], [0, 2, 1]]), scores=np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]],
                                                                          dtype=np.float32),
               subset_indices=np.array([[1, 3], [2, 0]]), subset_scores=np.array([[0.8, 0.9], [0.5, 0.6]],
                                                                                   dtype=np.float32),
               first_relevant_rank=np.array([3, 9]))


def test_rerank_run_recomputes_first_relevant_rank() -> None:
    run = _run()
    reward = np.array([[0.1, 0.5, 0.9], [0.0, 0.0, 0.0]])
    penalty = np.array([[0.6, 0.1, 0.0], [0.0, 0.0, 0.0]])
    out = rerank_run(run, reward, penalty, relevant=[[4], [5]])
    assert out.indices.tolist() == [[4, 1, 3], [0, 2, 1]]
    np.testing.assert_allclose(out.scores[0], [0.665, 0.56, 0.225], atol=1e-6)
    np.testing.assert_allclose(out.scores[1], [0.3, 0.25, 0.2], atol=1e-6)  # s(1+0-0)/2
    assert out.first_relevant_rank is not None and out.first_relevant_rank.tolist() == [1, 9]
    assert out.subset_indices is not None and out.subset_indices.tolist() == [[1, 3], [2, 0]]  # untouched
    assert run.indices.tolist() == [[3, 1, 4], [0, 2, 1]]  # the input Run is not modified
    assert rerank_run(run, reward, penalty).first_relevant_rank is None  # cannot recompute without labels


def test_rerank_run_subset() -> None:
    run = _run()
    zeros = np.zeros((2, 3))
    sub_r = np.array([[1.0, 0.0], [0.0, 0.0]])  # q0: c1 .8·2/2 = .8 vs c3 .9·1/2 = .45
    out = rerank_run(run, zeros, zeros, subset=(sub_r, np.zeros((2, 2))))
    assert out.subset_indices is not None and out.subset_indices.tolist() == [[1, 3], [0, 2]]
    bare = Run(query_ids=["q"], corpus_ids=["a", "b"], indices=np.array([[0, 1]]),
               scores=np.array([[0.5, 0.4]], dtype=np.float32))
    with pytest.raises(ValueError, match="no subset"):
        rerank_run(bare, np.zeros((1, 2)), np.zeros((1, 2)), subset=(np.zeros((1, 2)), np.zeros((1, 2))))


def test_protocol_record() -> None:
    proto = soft_protocol(lam=0.5, mode="reward", depth=50, constraints="c.json")
    assert proto["rerank"] == "soft" and proto["mode"] == "reward" and proto["lambda"] == 0.5
    assert proto["formula"] == "(1 - lambda) * s + lambda * s * r" and proto["depth"] == 50
    assert proto["caption_role"] == "query" and proto["caption_instruction"] is None
    json.dumps(proto)  # fits in result.json
    with pytest.raises(ValueError):
        soft_protocol(lam=2, mode="soft", depth=1)


# --------------------------------------------------------------------------------------------------
# Constraint files
# --------------------------------------------------------------------------------------------------


def test_load_soft_output_keyed_by_query(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({
        "q1": {"attributes": {"keep": ["red"], "add": ["sleeves"], "remove": ["logo"]},
               "queries": {"prescriptive_query": "a red dress with sleeves",
                           "proscriptive_query": "a dress with a logo"}},
        "q2": {"prescriptive": ["a cat", "a kitten"], "proscriptive": None},
    }))
    c = load_constraints(path)
    assert c["q1"] == Constraint("q1", ("a red dress with sleeves",), ("a dress with a logo",), ("red",),
                                 ("sleeves",), ("logo",))
    assert c["q2"].prescriptive == ("a cat", "a kitten") and c["q2"].proscriptive == ()


def test_load_jsonl_and_list(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"query_id": "a", "prescriptive": "x"}\n\n{"id": 7, "proscriptive": "y"}\n')
    c = load_constraints(path)
    assert c["a"].prescriptive == ("x",) and c["7"].proscriptive == ("y",)
    listed = tmp_path / "l.json"
    listed.write_text(json.dumps([{"query_id": "a", "keep": ["k"]}]))
    assert load_constraints(listed)["a"].keep == ("k",)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("c.json", "{not json", "malformed JSON"),
    ("c.jsonl", '{"query_id": "a"}\n{oops\n', "record 'line 2'"),
    ("c.json", '"a string"', "expected a JSON object"),
    ("c.json", '{"q": {"prescriptive": 3}}', "field 'prescriptive'"),
    ("c.json", '{"q": {"keep": "red"}}', "field 'keep'"),
    ("c.json", '{"q": {"queries": []}}', "field 'queries'"),
    ("c.json", '[{"prescriptive": "x"}]', "field 'query_id'"),
    ("c.json", '[{"query_id": "a"}, {"query_id": "a"}]', "duplicate query id"),
    ("c.json", "{}", "no constraints"),
    ("c.json", '{"q": [1]}', "must be a JSON object"),
])
def test_load_errors_name_the_place(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as e:
        load_constraints(path)
    assert str(path) in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        load_constraints(tmp_path / "nope.json")


# --------------------------------------------------------------------------------------------------
# Reward and penalty from an encoder
# --------------------------------------------------------------------------------------------------


class TextTable:
    """Embeds known captions as fixed vectors and records how it was called."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.spec = ModelSpec(name="text-table", id="test/text-table", modalities=("text", "image"))
        self.calls: list[tuple[str, str | None]] = []

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "text-table"}

    def encode(self, batch: Batch, *, role: str, instruction: str | None = None) -> np.ndarray:
        self.calls.append((role, instruction))
        return np.array([self.table[t or ""] for t in batch.texts], dtype=np.float32)


def test_constraint_scores_are_cosines() -> None:
    corpus = np.eye(3, dtype=np.float32)  # candidates are the unit axes
    enc = TextTable({"red": [1, 0, 0], "blue": [0, 2, 0], "sky": [0, 1, 1]})
    constraints = {
        "q0": Constraint("q0", prescriptive=("red", "sky"), proscriptive=("blue",)),
        "q1": Constraint("q1", prescriptive=("",), proscriptive=()),  # empty: r = p = 0
    }
    reward, penalty = constraint_scores(enc, constraints, ["q0", "q1"], corpus,
                                        np.array([[0, 1, 2], [2, -1, -1]]))
    h = 1 / np.sqrt(2)
    # r(x) = mean(cos(red, x), cos(sky, x)): x=e0 -> (1+0)/2, e1 -> (0+h)/2, e2 -> (0+h)/2
    np.testing.assert_allclose(reward[0], [0.5, h / 2, h / 2], atol=1e-6)
    np.testing.assert_allclose(penalty[0], [0, 1, 0], atol=1e-6)  # "blue" normalised to e1
    assert not reward[1].any() and not penalty[1].any()
    assert {c for c in enc.calls} == {("query", None)}  # captions as plain text queries


def test_constraint_scores_missing_queries() -> None:
    enc = TextTable({"red": [1, 0]})
    cons = {"q0": Constraint("q0", prescriptive=("red",))}
    with pytest.raises(DatasetError, match="no constraints"):
        constraint_scores(enc, cons, ["q0", "q1"], np.eye(2), np.array([[0, 1], [1, 0]]))
    r, p = constraint_scores(enc, cons, ["q0", "q1"], np.eye(2), np.array([[0, 1], [1, 0]]),
                             allow_missing=True, instruction="describe")
    assert r.tolist() == [[1, 0], [0, 0]] and not p.any()
    assert enc.calls[-1] == ("query", "describe")


def test_soft_end_to_end_order() -> None:
    """Base scores, then reward/penalty from captions, then the re-ranked Run, all by hand."""
    corpus = np.eye(3, dtype=np.float32)
    enc = TextTable({"want": [0, 0, 1], "avoid": [1, 0, 0]})
    run = Run(query_ids=["q"], corpus_ids=["a", "b", "c"], indices=np.array([[0, 1, 2]]),
              scores=np.array([[0.9, 0.6, 0.5]], dtype=np.float32))
    r, p = constraint_scores(enc, {"q": Constraint("q", ("want",), ("avoid",))}, ["q"], corpus, run.indices)
    out = rerank_run(run, r, p)
    # a: .9(1+0-1)/2 = 0; b: .6(1+0-0)/2 = .3; c: .5(1+1-0)/2 = .5
    assert out.indices.tolist() == [[2, 1, 0]]
    np.testing.assert_allclose(out.scores[0], [0.5, 0.3, 0.0], atol=1e-6)
