"""Which vector an item gets: precomputed vectors by id, always; cache keys that do not depend on how the
data directory is spelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
from cirbench.core.result import Result
from cirbench.core.types import Protocol

from .conftest import png
from .test_tasks_edir import write_edir

runner = CliRunner()


def twin_queries(root: Path) -> Path:
    """Two queries with the same reference image and the same text, but different targets (the real CIRR
    val has 6 such pairs, FashionIQ val 11)."""
    colors = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    corpus = [ImageRecord(id=k, image=png(v)) for k, v in colors.items()]
    queries = [QueryRecord(id="q1", reference_id="a", text="same words", relevant_ids=["b"]),
               QueryRecord(id="q2", reference_id="a", text="same words", relevant_ids=["c"])]
    protocol = Protocol(metrics=("R@1",), main_metric="R@1", top_k=2, exclude_reference=True)
    return write_dataset(root, {"test": SplitData(queries=queries, corpus=corpus)}, name="twins",
                         protocol=protocol)


def test_precomputed_vectors_are_looked_up_by_id(tmp_path: Path) -> None:
    dataset = twin_queries(tmp_path / "twins")
    rows = [("q1", "query", [0.0, 1.0, 0.0]), ("q2", "query", [0.0, 0.0, 1.0])]
    rows += [(cid, "document", list(np.eye(3)[i])) for i, cid in enumerate("abc")]
    vectors = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), vectors)
    for out in ("o1", "o2"):  # the second run reads the cache: it must not mix the twins up either
        res = runner.invoke(app, ["eval", "-m", f"precomputed:{vectors}", "-t", str(dataset), "-o",
                                  str(tmp_path / out), "-q", "--bootstrap", "0",
                                  "--cache-dir", str(tmp_path / "cache")])
        assert res.exit_code == 0, res.output
        result = Result.read(tmp_path / out)
        # q1's vector ranks b first, q2's ranks c first: both hit. Sharing q1's vector, q2 would miss.
        assert result.overall["R@1"].value == 1.0
        assert result.encoding["query"]["unique"] == 2
    assert result.encoding["query"]["from_cache"] == 2


def test_cache_key_does_not_depend_on_how_the_data_dir_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_edir(tmp_path / "data" / "edir")
    monkeypatch.chdir(tmp_path / "data")
    spellings = ["edir", str(tmp_path / "data" / "edir"), "./../data/edir/"]
    for n, spelling in enumerate(spellings):
        res = runner.invoke(app, ["eval", "-m", "random", "-t", "edir", "--data-dir", spelling, "-o",
                                  str(tmp_path / f"o{n}"), "-q", "--bootstrap", "0",
                                  "--cache-dir", str(tmp_path / "cache")])
        assert res.exit_code == 0, res.output
    first, *later = (Result.read(tmp_path / f"o{n}") for n in range(len(spellings)))
    assert first.encoding["document"]["encoded"] == 7
    for r in later:
        assert r.encoding["document"]["encoded"] == 0 and r.encoding["query"]["encoded"] == 0
        assert r.overall["R@1"].value == first.overall["R@1"].value
