"""The native dataset format: round trip, hub-compatible parquet, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, load_native, write_dataset
from cirbench.core.types import DatasetError
from tests.conftest import png


def test_round_trip(tiny_dataset: Path) -> None:
    task = load_native(tiny_dataset, "test")
    assert [q.id for q in task.queries] == ["q1", "q2", "q3"]
    assert task.queries[1].relevant_ids == ("c", "d")
    assert task.queries[0].candidate_ids == ("a", "b", "c")
    assert task.queries[0].item.text == "make it green" and task.queries[0].item.image is not None
    assert task.corpus[0].caption == "a a square"
    assert task.protocol.top_k == 4 and task.metadata.taxonomy["Color"] == "Attribute"
    assert task.revision and len(task.revision) == 16
    assert task.corpus[2].load_image().getpixel((0, 0)) == (0, 0, 255)


def test_loadable_with_datasets(tiny_dataset: Path) -> None:
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"test": str(tiny_dataset / "test" / "queries.parquet")})
    assert ds["test"]["relevant_ids"][1] == ["c", "d"]


def test_unknown_relevant_id_writes_nothing(tmp_path: Path) -> None:
    split = SplitData(
        queries=[QueryRecord(id="q1", text="t", relevant_ids=["zz"], reference_id="a")],
        corpus=[ImageRecord(id="a", image=png((1, 2, 3)))],
    )
    with pytest.raises(DatasetError) as err:
        write_dataset(tmp_path / "bad", {"test": split}, name="bad")
    msg = str(err.value)
    assert "unknown corpus id 'zz'" in msg and "record 'q1'" in msg and "field 'relevant_ids'" in msg
    assert "queries.parquet" in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_path_escaping_root_is_refused(tmp_path: Path) -> None:
    split = SplitData(
        queries=[QueryRecord(id="q1", text="t", relevant_ids=["a"], reference_id="a")],
        corpus=[ImageRecord(id="a", image_path="../../etc/passwd")],
    )
    with pytest.raises(DatasetError, match="escapes the dataset root.*record 'a'.*field 'image_path'"):
        write_dataset(tmp_path / "evil", {"test": split}, name="evil")


def test_missing_image_file_names_it(tmp_path: Path) -> None:
    split = SplitData(
        queries=[QueryRecord(id="q1", text="t", relevant_ids=["a"], reference_id="a")],
        corpus=[ImageRecord(id="a", image_path="images/a.png")],
    )
    root = write_dataset(tmp_path / "ds", {"test": split}, name="ds")
    task = load_native(root)
    with pytest.raises(DatasetError, match=r"image file is missing.*images/a.png.*record 'a'.*field 'image'"):
        task.corpus[0].load_image()


def test_malformed_inputs(tiny_dataset: Path) -> None:
    manifest = tiny_dataset / "cirbench.json"
    data = json.loads(manifest.read_text())
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_native(tiny_dataset, "dev")
    # a queries file without its required column
    table = pq.read_table(tiny_dataset / "test" / "queries.parquet").drop(["text"])
    pq.write_table(table, tiny_dataset / "test" / "queries.parquet")
    with pytest.raises(DatasetError, match="required column is missing.*queries.parquet.*field 'text'"):
        load_native(tiny_dataset)
    manifest.write_text("{not json")
    with pytest.raises(DatasetError, match="malformed JSON.*cirbench.json"):
        load_native(tiny_dataset)
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="unsupported format_version"):
        load_native(tiny_dataset)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    split = SplitData(queries=[], corpus=[ImageRecord(id="a", image=png((0, 0, 0)))])
    with pytest.raises(DatasetError, match="has no queries"):
        write_dataset(tmp_path / "empty", {"test": split}, name="empty")


def test_same_data_same_bytes(tmp_path: Path) -> None:
    def build(root: Path) -> Path:
        split = SplitData(
            queries=[QueryRecord(id="q", text="t", relevant_ids=["a"], reference_id="a", meta={"k": 1})],
            corpus=[ImageRecord(id="a", image=png((5, 5, 5)))],
        )
        return write_dataset(root, {"test": split}, name="same")

    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    for rel in ("cirbench.json", "test/queries.parquet", "test/corpus.parquet"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
