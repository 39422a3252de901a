"""EDIR: the released manifests, images from the split tar, the pinned hub path (mocked), breakdowns."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cirbench.core.run import Run
from cirbench.core.scoring import breakdowns, grouped_scores, per_query_values
from cirbench.core.types import DatasetError
from cirbench.tasks import get_task
from cirbench.tasks.edir import HUB_ID, HUB_REVISION, PAPER_CORPUS_SIZE, canonical_subcategory

from .conftest import png

# (query id, subcategory label as in the file, positive, negatives)
QUERIES = [
    ("q0", "color", "510_1_0.png", ["510_1_1.png", "510_1_2.png"]),
    ("q1", "Material", "510_1_1.png", ["510_1_0.png"]),
    ("q2", "remove", "511_2_0.png", ["511_2_1.png"]),
    ("q3", "Weather", "511_2_1.png", []),
    ("q4", "complex", "512_3_0.png", ["512_3_1.png", "510_1_2.png"]),
    ("q5", "Swirl", "512_3_1.png", []),  # not in the taxonomy
]
CORPUS = ["510_1_0.png", "510_1_1.png", "510_1_2.png", "511_2_0.png", "511_2_1.png", "512_3_0.png",
          "512_3_1.png"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_manifests(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _jsonl(root / "corpus.jsonl", [{"id": c, "image": c} for c in CORPUS])
    _jsonl(root / "queries.jsonl", [{"id": q, "image": f"ref_{q}.png", "text": f"edit {q}",
                                     "metadata": {"subcategory": sub}} for q, sub, _, _ in QUERIES])
    _jsonl(root / "instances.jsonl", [{"qid": q, "pos": [pos], "neg": neg} for q, _, pos, neg in QUERIES])


def image_names() -> list[str]:
    return CORPUS + [f"ref_{q}.png" for q, *_ in QUERIES]


def write_edir(root: Path) -> Path:
    """The manifests and the images, already extracted to imgs_mc/."""
    write_manifests(root)
    (root / "imgs_mc").mkdir()
    for n, name in enumerate(image_names()):
        (root / "imgs_mc" / name).write_bytes(png((n * 20, 0, 0), 4))
    return root


@pytest.fixture
def edir_dir(tmp_path: Path) -> Path:
    return write_edir(tmp_path / "edir")


def test_load_local(edir_dir: Path) -> None:
    task = get_task("edir", data_dir=edir_dir)
    assert task.split == "test" and len(task.queries) == 6 and len(task.corpus) == 7
    assert task.corpus[0].image == edir_dir / "imgs_mc" / "510_1_0.png"
    q0 = task.queries[0]
    assert q0.item.image == edir_dir / "imgs_mc" / "ref_q0.png" and q0.item.text == "edit q0"
    assert q0.relevant_ids == ("510_1_0.png",)
    assert q0.hard_negative_ids == ("510_1_1.png", "510_1_2.png")
    assert [(q.subcategory, q.category) for q in task.queries] == [
        ("Color", "Attribute"), ("Material", "Attribute"), ("Remove", "Object"),
        ("Weather", "Global Environment"), ("Complex", "Complex"), ("Swirl", None)]
    assert task.extra["unmapped_subcategories"] == {"Swirl": 1}
    p = task.protocol
    assert p.main_metric == "R@1" and p.metrics == ("R@1", "R@5", "R@10", "mAP@10")
    assert p.notes["corpus_size"] == "7" and p.notes["corpus_size_paper"] == str(PAPER_CORPUS_SIZE)
    assert "NOT comparable" in p.notes["comparability"]
    assert "7 images" in p.gallery and "178,645" in p.gallery
    assert task.revision is not None and task.revision.startswith("sha1:")
    assert task.metadata.instructions["query"].startswith("Given an image")
    assert not p.exclude_reference


def test_canonical_subcategory() -> None:
    assert canonical_subcategory(" COLOR ") == "Color"
    assert canonical_subcategory("global_environment") is None
    assert canonical_subcategory("viewpoint") == "Viewpoint"


def _split_tar(root: Path, names: list[str], parts: int = 3) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n, name in enumerate(names):
            data = png((0, n * 10, 0), 4)
            info = tarfile.TarInfo(f"imgs_mc/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        extra = b"not needed"
        info = tarfile.TarInfo("imgs_mc/unused.png")
        info.size = len(extra)
        tar.addfile(info, io.BytesIO(extra))
    raw = buf.getvalue()
    step = len(raw) // parts + 1
    for i in range(parts):
        (root / f"imgs_mc.tar.parta{chr(97 + i)}").write_bytes(raw[i * step:(i + 1) * step])


def test_images_extracted_from_split_tar(tmp_path: Path) -> None:
    root = tmp_path / "edir"
    write_manifests(root)
    _split_tar(root, image_names())
    task = get_task("edir", data_dir=root)
    assert task.corpus[3].image == root / "imgs_mc" / "511_2_0.png"
    assert sorted(p.name for p in (root / "imgs_mc").iterdir()) == sorted(image_names())
    assert task.queries[0].item.load_image().size == (4, 4)
    # second load: nothing to extract
    for part in root.glob("imgs_mc.tar.part*"):
        part.unlink()
    assert len(get_task("edir", data_dir=root).corpus) == 7


def test_missing_images_without_archive(tmp_path: Path) -> None:
    root = tmp_path / "edir"
    write_manifests(root)
    with pytest.raises(DatasetError, match=r"13 of 13 images of edir test are missing"):
        get_task("edir", data_dir=root)
    assert len(get_task("edir", data_dir=root, check_images="false").queries) == 6


def test_hub_id_downloads_pinned_revision(edir_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[tuple[tuple, dict]] = []

    def fake_snapshot_download(*args: object, **kwargs: object) -> str:
        calls.append((args, kwargs))
        return str(edir_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)  # no local folder named EDIR-BENCH/EDIR
    task = get_task("edir", data_dir=HUB_ID)
    assert calls == [((HUB_ID,), {"revision": HUB_REVISION, "repo_type": "dataset"})]
    assert task.revision == f"hub:{HUB_ID}@{HUB_REVISION}"
    assert task.extra["hub_revision"] == HUB_REVISION
    # a local directory never reaches the hub
    calls.clear()
    get_task("edir", data_dir=edir_dir)
    assert calls == []
    with pytest.raises(ValueError, match="revision applies only"):
        get_task("edir", data_dir=edir_dir, revision="main")


@pytest.mark.parametrize("case, pattern", [
    ("pos-missing",
     r"corpus id 'nope.png' is not in corpus.jsonl.*instances.jsonl.*record 'q2'.*field 'pos'"),
    ("bad-json", r"malformed JSON.*queries.jsonl.*record 'line 2'"),
    ("no-subcategory", r"metadata.subcategory.*queries.jsonl.*record 'q1'"),
    ("two-pos", r"exactly one positive.*record 'q0'"),
    ("no-instance", r"no record in instances.jsonl.*record 'q5'"),
])
def test_bad_manifests(edir_dir: Path, case: str, pattern: str) -> None:
    rows = [{"qid": q, "pos": [pos], "neg": neg} for q, _, pos, neg in QUERIES]
    qrows = [{"id": q, "image": f"ref_{q}.png", "text": "t", "metadata": {"subcategory": s}}
             for q, s, _, _ in QUERIES]
    if case == "pos-missing":
        rows[2]["pos"] = ["nope.png"]
        _jsonl(edir_dir / "instances.jsonl", rows)
    elif case == "bad-json":
        lines = (edir_dir / "queries.jsonl").read_text().splitlines()
        lines[1] = lines[1][:-3]
        (edir_dir / "queries.jsonl").write_text("\n".join(lines))
    elif case == "no-subcategory":
        qrows[1]["metadata"] = {}
        _jsonl(edir_dir / "queries.jsonl", qrows)
    elif case == "two-pos":
        rows[0]["pos"] = ["510_1_0.png", "510_1_1.png"]
        _jsonl(edir_dir / "instances.jsonl", rows)
    else:
        _jsonl(edir_dir / "instances.jsonl", rows[:5])
    with pytest.raises(DatasetError, match=pattern):
        get_task("edir", data_dir=edir_dir)


def test_scores_per_subcategory_and_main_category(edir_dir: Path) -> None:
    """R@1 and mAP@10 from a hand-made run, per group, against values computed by hand."""
    distractors = [f"900_{i}_0.png" for i in range(8)]  # a gallery deeper than 10
    _jsonl(edir_dir / "corpus.jsonl", [{"id": c, "image": c} for c in CORPUS + distractors])
    for name in distractors:
        (edir_dir / "imgs_mc" / name).write_bytes(png((1, 2, 3), 4))
    task = get_task("edir", data_dir=edir_dir)
    pos = task.corpus_positions
    # rank of the positive per query: 1, 3, 1, 12 (not in the top 10), 2, 1
    ranks = [1, 3, 1, 12, 2, 1]
    indices = np.full((6, 50), -1, dtype=np.int64)
    for qi, (q, r) in enumerate(zip(task.queries, ranks, strict=True)):
        others = [p for p in range(len(task.corpus)) if p != pos[q.relevant_ids[0]]]
        row = others[: r - 1] + [pos[q.relevant_ids[0]]] + others[r - 1:]
        indices[qi, : len(row)] = row
    run = Run([q.id for q in task.queries], [it.id for it in task.corpus], indices,
              np.zeros(indices.shape, dtype=np.float32))
    table = run.to_table(task)
    values = per_query_values(table, task.protocol.to_dict())
    np.testing.assert_array_equal(values["R@1"], [1, 0, 1, 0, 0, 1])
    np.testing.assert_allclose(values["mAP@10"], [1, 1 / 3, 1, 0, 1 / 2, 1])
    scores = grouped_scores(values, breakdowns(table), n_resamples=0)
    assert scores["overall"]["overall"]["R@1"].value == pytest.approx(3 / 6)
    assert scores["category"]["Attribute"]["R@1"].value == pytest.approx(1 / 2)
    assert scores["category"]["Attribute"]["mAP@10"].value == pytest.approx((1 + 1 / 3) / 2)
    assert scores["category"]["Object"]["R@1"].value == 1.0
    assert scores["subcategory"]["Complex"]["mAP@10"].value == pytest.approx(0.5)
    assert set(scores["subcategory"]) == {"Color", "Material", "Remove", "Weather", "Complex", "Swirl"}
