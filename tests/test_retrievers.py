"""The retrieval seam: a new retriever (RRF) and the one tail rule, on hand-made vectors and runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import cirbench
from cirbench.cli import app
from cirbench.core.run import Run
from cirbench.evaluation import EvalOptions
from cirbench.retrieval.base import TAIL_RULE, rerank_head
from cirbench.retrieval.registry import get_reranker, get_retriever

from .test_evaluate import QUERY_VECTORS, write_vectors

# A second model's query vectors over the same unit-axis corpus a..e (score = the coordinate).
OTHER = {
    "q1": [0.0, 0.2, 0.1, 0.9, 0.0],  # ref a excluded -> d, b, c, e
    "q2": [0.5, 0.0, 0.9, 0.0, 0.1],  # ref b excluded -> c, a, e, d
    "q3": [0.3, 0.0, 0.0, 0.1, 0.2],  # ref c excluded -> a, e, d, b
}


def _other(path: Path) -> Path:
    rows = [(q, "query", v) for q, v in OTHER.items()]
    rows += [(cid, "document", list(np.eye(5)[i])) for i, cid in enumerate("abcde")]
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), path)
    return path


def test_reciprocal_rank_fusion_by_hand(tiny_dataset: Path, tmp_path: Path) -> None:
    a, b = write_vectors(tmp_path / "a.parquet"), _other(tmp_path / "b.parquet")
    assert QUERY_VECTORS["q1"][2] == 0.7  # the first model's q1 ranking is c, b, d, e
    out = tmp_path / "rrf"
    res = CliRunner().invoke(app, ["eval", "--retriever", "rrf", "--retriever-option",
                                   f"models=precomputed:{a},precomputed:{b}", "--retriever-option", "depth=4",
                                   "-t", str(tiny_dataset), "-o", str(out), "-q", "--bootstrap", "0",
                                   "--no-cache"])
    assert res.exit_code == 0, res.output
    rows = {r["query_id"]: r for r in pq.read_table(out / "run.parquet").to_pylist()}
    # q1: c 1/61+1/63, d 1/63+1/61 (tie: c has the lower position), b 2/62, e 2/64
    assert rows["q1"]["ranked_ids"] == ["c", "d", "b", "e"]
    np.testing.assert_allclose(rows["q1"]["scores"], [1 / 61 + 1 / 63, 1 / 61 + 1 / 63, 2 / 62, 2 / 64],
                               rtol=1e-6)
    # q2: c 1/63+1/61, d 1/61+1/64, e 1/62+1/63, a 1/64+1/62
    assert rows["q2"]["ranked_ids"] == ["c", "d", "e", "a"]
    # q3: e 1/61+1/62, a 1/63+1/61, d 1/62+1/63, b 2/64
    assert rows["q3"]["ranked_ids"] == ["e", "a", "d", "b"]
    # subsets minus the reference; q1 {b, c}: b 1/62+1/61 ties c 1/61+1/62 -> b (lower position)
    assert [rows[q]["subset_ranked_ids"][0] for q in ("q1", "q2", "q3")] == ["b", "c", "e"]
    result = json.loads((out / "result.json").read_text())
    overall = result["scores"]["overall"]["overall"]
    assert overall["R@1"]["value"] == pytest.approx(2 / 3) and overall["R@2"]["value"] == pytest.approx(2 / 3)
    assert overall["R_s@1"]["value"] == pytest.approx(1.0)
    assert result["retrieval"]["retriever"]["name"] == "rrf"
    assert len(result["retrieval"]["retriever"]["fingerprint"]["members"]) == 2
    assert result["protocol"]["k"] == 60 and result["model"]["name"] == "rrf"


def test_rrf_refuses_one_model_and_a_model_beside_it(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least two models"):
        get_retriever("rrf", models="random")
    with pytest.raises(ValueError, match="not both"):
        cirbench.evaluate("random", str(tiny_dataset), output=tmp_path / "o",
                          retriever=get_retriever("rrf", models="random,text-only"))
    assert not (tmp_path / "o").exists()


def test_the_tail_keeps_base_order_and_scores() -> None:
    run = Run(query_ids=["q"], corpus_ids=list("abcdef"), indices=np.array([[0, 1, 2, 3, -1]]),
              scores=np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], dtype=np.float32),
              first_relevant_rank=np.array([1]))

    def reverse(head: Run) -> Run:
        assert head.indices.shape == (1, 2)  # the reranker sees only its depth
        return Run(head.query_ids, head.corpus_ids, head.indices[:, ::-1], np.array([[5.0, 4.0]]),
                   first_relevant_rank=np.array([2]))

    out = rerank_head(run, 2, reverse)
    assert out.indices.tolist() == [[1, 0, 2, 3, -1]]
    np.testing.assert_allclose(out.scores[0, :4], [5.0, 4.0, 0.7, 0.6])
    assert out.first_relevant_rank is not None and out.first_relevant_rank.tolist() == [2]
    assert run.indices.tolist() == [[0, 1, 2, 3, -1]]  # the base run is not changed
    assert rerank_head(run, None, lambda h: h).indices.shape == (1, 5)
    assert "base run's order" in TAIL_RULE


def test_soft_depth_reorders_only_the_head(tiny_dataset: Path, tmp_path: Path) -> None:
    """q1's base order is c (.7), b (.5), d, e; the must-have caption points at b. With λ = 1 b wins
    at depth 2 (c: .7·(1+0)/2 = .35 < b: .5·(1+1)/2 = .5); at depth 1 the head is c alone."""
    vectors = write_vectors(tmp_path / "v.parquet")
    table = pq.read_table(vectors)
    extra = pa.table({"id": ["soft-caption-0"], "role": ["query"], "vector": [[0.0, 1.0, 0.0, 0.0, 0.0]]})
    pq.write_table(pa.concat_tables([table, extra.cast(table.schema)]), vectors)
    cons = tmp_path / "c.json"
    cons.write_text(json.dumps({"q1": {"prescriptive": "a green square"}, "q2": {}, "q3": {}}))
    ranked = {}
    for depth in (1, 2):
        out = tmp_path / f"d{depth}"
        result = cirbench.evaluate(f"precomputed:{vectors}", str(tiny_dataset), output=out,
                                   options=EvalOptions(progress=False, n_bootstrap=0),
                                   rerankers=[get_reranker("soft", constraints=cons, depth=depth,
                                                           **{"lambda": 1.0})])
        ranked[depth] = pq.read_table(out / "run.parquet").to_pylist()[0]
        assert result.protocol["rerank"]["depth"] == depth
        assert result.retrieval["tail_rule"] == TAIL_RULE
    assert ranked[1]["ranked_ids"] == ["c", "b", "d", "e"]
    norm = float(np.linalg.norm(QUERY_VECTORS["q1"]))  # the precomputed vectors are normalised
    assert ranked[1]["scores"][1:] == pytest.approx([0.5 / norm, 0.0, 0.0])  # the tail keeps base scores
    assert ranked[2]["ranked_ids"][:2] == ["b", "c"]


def test_the_registries_are_listed() -> None:
    res = CliRunner().invoke(app, ["retrievers", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert {r["name"] for r in listed["retrievers"]} >= {"rrf", "late-interaction"}
    soft = next(r for r in listed["rerankers"] if r["name"] == "soft")
    assert soft["required"] == ["constraints"] and "lambda" in soft["options"]
