"""The eval flow end to end on a hand-built dataset, with hand-computed expected numbers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cirbench
from cirbench.core.result import Result
from cirbench.core.run import read_run_table
from cirbench.core.scoring import per_query_values
from cirbench.evaluation import EvalOptions
from cirbench.retrieval.registry import get_reranker

QUIET = EvalOptions(progress=False, n_bootstrap=200)

# Corpus a..e are the unit axes e1..e5, so a query's score for an item is its own coordinate there.
QUERY_VECTORS = {
    "q1": [0.9, 0.5, 0.7, 0.0, 0.0],  # ref a excluded -> c, b, d, e (d before e: tie broken by position)
    "q2": [0.0, 0.9, 0.1, 0.8, 0.3],  # ref b excluded -> d, e, c, a
    "q3": [0.0, 0.0, 0.5, 0.2, 0.6],  # ref c excluded -> e, d, a, b
}


def write_vectors(path: Path) -> Path:
    rows = [(q, "query", v) for q, v in QUERY_VECTORS.items()]
    rows += [(cid, "document", list(np.eye(5)[i])) for i, cid in enumerate("abcde")]
    pq.write_table(
        pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows], "vector": [r[2] for r in rows]}),
        path,
    )
    return path


def test_hand_computed_scores(tiny_dataset: Path, tmp_path: Path) -> None:
    vectors = write_vectors(tmp_path / "vectors.parquet")
    result = cirbench.evaluate(
        f"precomputed:{vectors}", str(tiny_dataset), output=tmp_path / "out", options=QUIET
    )
    o = result.overall
    # q1: relevant b at rank 2; subset {b,c}: c first -> R_s@1 0; AP@2 = (1/2)/min(2,1) = 0.5; RR 1/2
    # q2: relevant {c,d}: d at rank 1, c at rank 3; subset {c,d}: d first; AP@2 = (1/1)/min(2,2) = 0.5
    # q3: relevant e at rank 1; AP@2 = 1; RR 1
    assert o["R@1"].value == pytest.approx(2 / 3)
    assert o["R@2"].value == pytest.approx(1.0)
    assert o["R_s@1"].value == pytest.approx(2 / 3)
    assert o["mAP@2"].value == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert o["MRR"].value == pytest.approx((0.5 + 1 + 1) / 3)
    assert result.scores["category"]["Attribute"]["R@1"].value == pytest.approx(0.5)
    assert result.scores["category"]["Object"]["R@1"].value == pytest.approx(1.0)
    assert result.scores["subcategory"]["Color"]["mAP@2"].value == pytest.approx(0.5)
    assert o["R@1"].n == 3 and o["R@1"].ci_low <= o["R@1"].value <= o["R@1"].ci_high

    table = read_run_table(tmp_path / "out" / "run.parquet")
    assert table.column("ranked_ids").to_pylist() == [
        ["c", "b", "d", "e"],
        ["d", "e", "c", "a"],
        ["e", "d", "a", "b"],
    ]
    assert table.column("subset_ranked_ids").to_pylist()[0] == ["c", "b"]
    assert table.column("first_relevant_rank").to_pylist() == [2, 1, 1]
    # every number in the result is recomputable from run.parquet alone
    again = per_query_values(table, result.protocol)
    assert float(np.mean(again["mAP@2"])) == pytest.approx(o["mAP@2"].value)

    on_disk = json.loads((tmp_path / "out" / "result.json").read_text())
    assert on_disk["schema_version"] == "2.0"
    assert on_disk["protocol"]["exclude_reference"] is True
    assert on_disk["task"]["revision"] and on_disk["cirbench_version"] == cirbench.__version__
    assert on_disk["model"]["revision"] and on_disk["provenance"]["wall_time_s"] >= 0
    assert Result.read(tmp_path / "out").overall["R@1"].value == pytest.approx(2 / 3)


def test_second_eval_encodes_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    opts = EvalOptions(progress=False, n_bootstrap=0, cache_dir=tmp_path / "cache")
    first = cirbench.evaluate("random", str(tiny_dataset), output=tmp_path / "r1", options=opts)
    second = cirbench.evaluate("random", str(tiny_dataset), output=tmp_path / "r2", options=opts)
    assert first.encoding["document"]["encoded"] == 5 and first.encoding["query"]["encoded"] == 3
    assert second.encoding["document"]["encoded"] == 0 and second.encoding["query"]["encoded"] == 0
    assert first.overall["R@1"].value == second.overall["R@1"].value


def test_limit_is_recorded(tiny_dataset: Path, tmp_path: Path) -> None:
    result = cirbench.evaluate("random", str(tiny_dataset), output=tmp_path / "o", limit=2, options=QUIET)
    assert result.task["limit"] == 2 and result.task["num_queries"] == 2
    assert result.overall["R@1"].n == 2


def test_modality_refused_before_encoding(tiny_dataset: Path, tmp_path: Path) -> None:
    from cirbench.models.base import ModelSpec
    from cirbench.models.baselines import RANDOM, RandomEncoder

    class TextOnly(RandomEncoder):
        def encode(self, batch, *, role, instruction=None):  # type: ignore[no-untyped-def]
            raise AssertionError("must not encode")

    spec = ModelSpec(name="text-model", id="x", modalities=("text",))
    with pytest.raises(ValueError, match="needs 'image\\+text' input"):
        cirbench.evaluate(TextOnly(spec), str(tiny_dataset), output=tmp_path / "o", options=QUIET)
    assert not (tmp_path / "o").exists()
    assert RANDOM.modalities  # the stock random model embeds everything


def test_wrong_width_vectors(tiny_dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(
        pa.table({"id": ["q1", "a"], "role": ["query", "document"], "vector": [[1.0, 0.0], [1.0, 0.0, 0.0]]}),
        path,
    )
    with pytest.raises(ValueError, match=r"width 3 differs from the first row's 2.*v.parquet.*'row 1'"):
        cirbench.evaluate(f"precomputed:{path}", str(tiny_dataset), output=tmp_path / "o", options=QUIET)
    assert not (tmp_path / "o").exists()


def test_user_plugin_model(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_plugin.py").write_text(
        "from cirbench.models.baselines import RandomEncoder\n"
        "from cirbench.models.base import ModelSpec\n"
        "def factory(**options):\n"
        "    return RandomEncoder(ModelSpec(name='mine', id='me/mine', revision='7'), seed=3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyError, match="--allow-plugins"):  # importing the user's code is their opt-in
        cirbench.evaluate("my_plugin:factory", str(tiny_dataset), output=tmp_path / "o", options=QUIET)
    assert not (tmp_path / "o").exists()
    opted_in = replace(QUIET, allow_plugins=True)
    result = cirbench.evaluate("my_plugin:factory", str(tiny_dataset), output=tmp_path / "o",
                               options=opted_in)
    assert result.model["name"] == "mine" and result.model["fingerprint"]["seed"] == 3
    with pytest.raises(KeyError, match="no attribute 'nope'"):
        cirbench.get_model("my_plugin:nope", allow_plugins=True)


def test_soft_rerank_in_the_flow(tiny_dataset: Path, tmp_path: Path) -> None:
    """SoFT soft filtering (λ=1): q1's must-have caption matches b, which moves above c."""
    vectors = tmp_path / "v.parquet"
    write_vectors(vectors)
    table = pq.read_table(vectors)
    # the one caption is encoded as item "soft-caption-0" (role query); it points at b's axis
    extra = pa.table({"id": ["soft-caption-0"], "role": ["query"], "vector": [[0.0, 1.0, 0.0, 0.0, 0.0]]})
    pq.write_table(pa.concat_tables([table, extra.cast(table.schema)]), vectors)
    constraints = tmp_path / "constraints.json"
    constraints.write_text(json.dumps({"q1": {"prescriptive": "a green square"}, "q2": {}, "q3": {}}))
    result = cirbench.evaluate(
        f"precomputed:{vectors}", str(tiny_dataset), output=tmp_path / "o",
        options=EvalOptions(progress=False, n_bootstrap=0),
        rerankers=[get_reranker("soft", constraints=constraints, **{"lambda": 1.0})],
    )
    # q1: c = 0.7·(1+0-0)/2 = .35 < b = 0.5·(1+1-0)/2 = .5 -> b first; q2, q3 keep their order
    assert result.overall["R@1"].value == pytest.approx(1.0)
    assert result.protocol["rerank"]["lambda"] == 1.0 and result.protocol["rerank"]["mode"] == "soft"
    ranked = read_run_table(tmp_path / "o" / "run.parquet").column("ranked_ids").to_pylist()
    assert ranked[0][:2] == ["b", "c"] and ranked[1] == ["d", "e", "c", "a"]
