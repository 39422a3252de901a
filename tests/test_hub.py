"""Built datasets on the Hub: the image column is the `datasets` Image() feature, the card's metadata is
completed and checked, and `cirbench push` uploads through the real huggingface_hub client to a local
stand-in for the Hub (tests/fake_hub.py), up to and including the commit."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, load_native, write_dataset
from cirbench.core.types import DatasetError
from cirbench.hub import dataset_card, prepare_push

from .conftest import png
from .fake_hub import fake_hub

runner = CliRunner(env={"COLUMNS": "200"})

CARD = """---
license: CC-BY-4.0 (generated data)
pretty_name: Two colours
task_categories:
- image-to-image
tags:
- synthetic
---

# Two colours

Hand-written prose that must survive.
"""


def build(root: Path, *, files: bool = False, card: str | None = CARD) -> Path:
    """Two splits; the test split has a reference image outside the gallery (references.parquet)."""
    def rec(i: str, colour: tuple[int, int, int]) -> ImageRecord:
        if files:
            return ImageRecord(id=i, image_path=f"images/{i}.png")
        return ImageRecord(id=i, image=png(colour, size=6))

    extra = {f"images/{i}.png": png(c, size=6) for i, c in (("a", (255, 0, 0)), ("b", (0, 0, 255)),
                                                                 ("r", (0, 255, 0)))} if files else None
    q = [QueryRecord(id="q1", reference_id="r", text="make it blue", relevant_ids=["b"])]
    splits = {
        "test": SplitData(queries=q, corpus=[rec("a", (255, 0, 0)), rec("b", (0, 0, 255))],
                          references=[rec("r", (0, 255, 0))]),
        "train": SplitData(queries=[QueryRecord(id="t1", reference_id="a", text="blue", relevant_ids=["b"])],
                           corpus=[rec("a", (255, 0, 0)), rec("b", (0, 0, 255))]),
    }
    return write_dataset(root, splits, name="two-colours", license="CC-BY-4.0", card=card, files=extra)


def test_image_column_is_the_datasets_image_feature(tmp_path: Path) -> None:
    import datasets

    root = build(tmp_path / "d")
    assert json.loads((root / "cirbench.json").read_text())["format_version"] == 2
    corpus = datasets.load_dataset("parquet", data_files=str(root / "test" / "corpus.parquet"),
                                   cache_dir=str(tmp_path / "hf"))["train"]
    assert corpus.features["image"] == datasets.Image()
    row = corpus[1]
    assert row["id"] == "b" and isinstance(row["image"], Image.Image)
    assert row["image"].size == (6, 6) and row["image"].convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    task = load_native(root, "test")  # cirbench reads it back, reference from references.parquet
    assert task.queries[0].item.load_image().getpixel((0, 0)) == (0, 255, 0)


def test_format_version_1_datasets_are_still_read(tmp_path: Path) -> None:
    root = build(tmp_path / "d")
    manifest = json.loads((root / "cirbench.json").read_text())
    manifest["format_version"] = 1
    (root / "cirbench.json").write_text(json.dumps(manifest))
    for rel in ("test/corpus.parquet", "test/references.parquet"):  # as version 1 wrote them: plain bytes
        t = pq.read_table(root / rel)
        blobs = [None if v is None else v["bytes"] for v in t.column("image").to_pylist()]
        old = pa.table({"id": t.column("id"), "image": pa.array(blobs, pa.binary()),
                        "image_path": t.column("image_path"), "caption": t.column("caption")})
        pq.write_table(old, root / rel)
    task = load_native(root, "test")
    assert [it.load_image().getpixel((0, 0)) for it in task.corpus] == [(255, 0, 0), (0, 0, 255)]


def test_card_metadata_is_completed_and_checked(tmp_path: Path) -> None:
    root = build(tmp_path / "d")
    text = (root / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "cc-by-4.0"  # the Hub's id for the builder's free text
    assert front["pretty_name"] == "Two colours" and front["size_categories"] == ["n<1K"]
    assert front["tags"] == ["synthetic", "composed-image-retrieval", "cirbench"]
    assert front["configs"] == [
        {"config_name": "queries", "data_files": [{"split": "test", "path": "test/queries.parquet"},
                                                  {"split": "train", "path": "train/queries.parquet"}]},
        {"config_name": "corpus", "data_files": [{"split": "test", "path": "test/corpus.parquet"},
                                                 {"split": "train", "path": "train/corpus.parquet"}]},
        {"config_name": "references", "data_files": [{"split": "test", "path": "test/references.parquet"}]},
    ]
    assert "Hand-written prose that must survive." in text
    bad = text.replace("- image-to-image", "- composed-retrieval")
    with pytest.raises(DatasetError, match="category 'composed-retrieval'.*field 'task_categories'"):
        dataset_card(root, bad)
    (root / "train" / "corpus.parquet").unlink()
    with pytest.raises(DatasetError, match="train/corpus.parquet' does not exist.*field 'configs'"):
        dataset_card(root)


def test_a_card_that_the_hub_would_refuse_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="task category"):
        build(tmp_path / "d", card=CARD.replace("image-to-image", "cir"))
    assert not (tmp_path / "d").exists() and not list(tmp_path.iterdir())  # nothing half-written


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test session runs with HF_HUB_OFFLINE=1; these tests talk to a local stand-in only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_push_uploads_the_dataset_as_one_commit(tmp_path: Path, online: None) -> None:
    root = build(tmp_path / "d")
    with fake_hub() as hub:
        res = runner.invoke(app, ["push", str(root), "--repo-id", "me/two-colours", "--endpoint", hub.url,
                                  "--token", "hf_fake", "--private"])
        assert res.exit_code == 0, res.output
        assert hub.unknown == [] and [p for _, p in hub.requests] == [
            "/api/repos/create", "/api/validate-yaml", "/api/datasets/me/two-colours/preupload/main",
            "/api/datasets/me/two-colours/commit/main"]
        repo = hub.repos["me/two-colours"]
    assert repo["private"] is True and len(repo["commits"]) == 1
    manifest = json.loads((root / "cirbench.json").read_text())
    assert repo["commits"][0] == f"cirbench push: two-colours 1.0 (dataset revision {manifest['revision']})"
    local = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert set(repo["files"]) == set(local)
    for rel, data in local.items():  # byte for byte; the card is the checked one, which is what is on disk
        assert repo["files"][rel] == data, rel
    assert hub.validated == [local["README.md"].decode()]
    assert "uploaded 7 files to datasets/me/two-colours" in res.output


def test_push_dry_run_and_refusals(tmp_path: Path, online: None) -> None:
    root = build(tmp_path / "d", files=True)
    with fake_hub() as hub:
        res = runner.invoke(app, ["push", str(root), "--repo-id", "me/x", "--endpoint", hub.url, "--dry-run"])
        assert res.exit_code == 0 and hub.requests == []
        assert "images/a.png" in res.output and "dry run: 10 files would go to datasets/me/x" in res.output
        assert "test/corpus: 2 image(s) are files" in res.output  # the viewer would show no picture
        hub.reject_commits = True
        res = runner.invoke(app, ["push", str(root), "--repo-id", "me/x", "--endpoint", hub.url])
        assert res.exit_code == 2 and "the Hub refused the upload of me/x" in res.output
        assert "Traceback" not in res.output
    (root / "README.md").write_text(CARD.replace("image-to-image", "nope"))
    res = runner.invoke(app, ["push", str(root), "--repo-id", "me/x", "--dry-run"])
    assert res.exit_code == 2 and "field 'task_categories'" in res.output


def test_push_offline_is_a_clean_error(tmp_path: Path) -> None:
    root = build(tmp_path / "d")
    res = runner.invoke(app, ["push", str(root), "--repo-id", "me/x", "--endpoint", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "HF_HUB_OFFLINE is set" in res.output


def test_prepare_push_skips_hidden_files_and_links(tmp_path: Path) -> None:
    root = build(tmp_path / "d")
    (root / ".cache").mkdir()
    (root / ".cache" / "x").write_text("temp")
    (root / "outside").symlink_to(tmp_path)
    plan = prepare_push(root, "me/x")
    assert not [p for p in plan.paths if p.startswith(".") or p == "outside"]
    assert any("outside: a symbolic link" in w for w in plan.warnings)
    assert plan.paths[0] == "README.md"
    assert plan.operations[0].path_or_fileobj == (root / "README.md").read_bytes()


def test_card_image(tmp_path: Path) -> None:
    """The pictures the viewer shows are the bytes cirbench stored: decoding them gives the source PNG."""
    root = build(tmp_path / "d")
    t = pq.read_table(root / "test" / "corpus.parquet")
    stored = t.column("image").to_pylist()[0]["bytes"]
    source = Image.open(io.BytesIO(png((255, 0, 0), size=6)))
    assert Image.open(io.BytesIO(stored)).tobytes() == source.tobytes()
