"""CIRCO loader: released annotation fields, the COCO unlabeled image list, protocol variants, parity.

Expected numbers come from a re-statement of CIRCO's server code (src/evaluation.py::compute_metrics) on
the raw JSON; the Task must reproduce them from relevant_ids, meta["target_id"] and meta["semantic_aspects"].
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cirbench.core.types import DatasetError, Task, query_exclusions
from cirbench.tasks import circo


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


JPG = _jpg()
N_IMAGES = 70


def image_ids() -> list[int]:
    rng = np.random.default_rng(7)
    return [int(i) for i in rng.choice(np.arange(1, 600_000), size=N_IMAGES, replace=False)]


def val_records(ids: list[int]) -> list[dict]:
    """Six queries, 1 to 9 GTs each (|G| > 5 exercises min(K, |G|)), target first in gt_img_ids."""
    aspects = [["addition", "cardinality"], ["negation"], ["viewpoint", "addition"], [],
               ["statement_with_conjunction"], ["addition"]]
    out = []
    for q, n_gt in enumerate((1, 3, 9, 5, 2, 7)):
        gts = ids[10 + 8 * q: 10 + 8 * q + n_gt]
        out.append({"reference_img_id": ids[q], "target_img_id": gts[0],
                    "relative_caption": f"is held by {q} little girls on a chair",
                    "shared_concept": "a teddy bear", "gt_img_ids": gts, "id": q,
                    "semantic_aspects": aspects[q]})
    return out


def circo_test_records(ids: list[int]) -> list[dict]:
    return [{"reference_img_id": ids[60 + q], "relative_caption": "has two more dogs",
             "shared_concept": "a dog", "id": q} for q in range(4)]


def write_circo(root: Path) -> Path:
    ids = image_ids()
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "val.json").write_text(json.dumps(val_records(ids), indent=4))
    (root / "annotations" / "test.json").write_text(json.dumps(circo_test_records(ids), indent=4))
    coco = root / "COCO2017_unlabeled"
    (coco / "annotations").mkdir(parents=True)
    (coco / "unlabeled2017").mkdir()
    info = {"info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                          "name": "Attribution-NonCommercial-ShareAlike License"}],
            "images": [{"license": 4, "file_name": f"{i:012d}.jpg",
                        "coco_url": f"http://images.cocodataset.org/unlabeled2017/{i:012d}.jpg",
                        "height": 480, "width": 640, "date_captured": "2013-11-14 16:28:13",
                        "flickr_url": "http://farm3.staticflickr.com/x.jpg", "id": i} for i in ids]}
    (coco / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps(info))
    for i in ids:
        (coco / "unlabeled2017" / f"{i:012d}.jpg").write_bytes(JPG)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_circo(tmp_path / "CIRCO")


def _score(qid: str, ref: str, image_id: str) -> float:
    if image_id == ref:
        return 2.0  # the reference is the nearest image, as for real models
    return int(hashlib.sha1(f"{qid}|{image_id}".encode()).hexdigest()[:8], 16) / 2**32


def _means(d: dict[Any, list[float]]) -> dict[Any, float]:
    return {k: float(np.mean(v)) for k, v in d.items()}


# -- reference computation: the CIRCO server's compute_metrics on the raw files -----------------------


def server_metrics(records: list[dict], ids: list[int], ranks: tuple[int, ...] = (5, 10, 25, 50)
                   ) -> tuple[dict[int, float], dict[int, float], dict[str, float]]:
    aps: dict[int, list[float]] = defaultdict(list)
    recalls: dict[int, list[float]] = defaultdict(list)
    aspect_aps: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        sims = np.array([_score(str(rec["id"]), str(rec["reference_img_id"]), str(i)) for i in ids])
        predictions = np.array(ids)[np.argsort(-sims, kind="stable")][:50]
        gt = rec["gt_img_ids"]
        ap_labels = np.isin(predictions, gt)
        precisions = np.cumsum(ap_labels, axis=0) * ap_labels / np.arange(1, ap_labels.shape[0] + 1)
        for r in ranks:
            aps[r].append(float(np.sum(precisions[:r]) / min(len(gt), r)))
            recalls[r].append(float(np.sum((predictions == rec["target_img_id"])[:r])))
        for aspect in rec["semantic_aspects"]:
            aspect_aps[aspect].append(float(np.sum(precisions[:10]) / min(len(gt), 10)))
    return _means(aps), _means(recalls), _means(aspect_aps)


# -- what the Task says ------------------------------------------------------------------------------------


def task_metrics(task: Task, ranks: tuple[int, ...] = (5, 10, 25, 50)
                 ) -> tuple[dict[int, float], dict[int, float], dict[str, float]]:
    aps: dict[int, list[float]] = defaultdict(list)
    recalls: dict[int, list[float]] = defaultdict(list)
    aspect_aps: dict[str, list[float]] = defaultdict(list)
    assert task.protocol.recall_on == "target_id"
    for q, ex in zip(task.queries, query_exclusions(task), strict=True):
        drop = {task.corpus[i].id for i in ex}
        ids = [it.id for it in task.corpus if it.id not in drop]
        s = np.array([_score(q.id, q.reference_id or "", c) for c in ids])
        ranked = [ids[j] for j in np.argsort(-s, kind="stable")[:task.protocol.top_k]]
        rel = set(q.relevant_ids)
        for k in ranks:
            hits, total = 0, 0.0
            for j, c in enumerate(ranked[:k], 1):
                if c in rel:
                    hits += 1
                    total += hits / j
            aps[k].append(total / min(k, len(rel)))
            recalls[k].append(float(q.meta["target_id"] in ranked[:k]))
            if k == 10:
                for aspect in q.meta["semantic_aspects"]:
                    aspect_aps[aspect].append(total / min(k, len(rel)))
    return _means(aps), _means(recalls), _means(aspect_aps)


# -- tests -------------------------------------------------------------------------------------------------


def test_val_task_fields(root: Path) -> None:
    task = circo.load(root, "val", "official")
    task.validate()
    ids = image_ids()
    assert [it.id for it in task.corpus] == [str(i) for i in ids]  # image_info order (SEARLE's index)
    assert task.corpus[0].image == root / "COCO2017_unlabeled" / "unlabeled2017" / f"{ids[0]:012d}.jpg"
    rec = val_records(ids)[2]
    q = task.queries[2]
    assert q.id == "2" and q.reference_id == str(rec["reference_img_id"])
    assert q.relevant_ids == tuple(str(g) for g in rec["gt_img_ids"]) and len(q.relevant_ids) == 9
    assert q.meta["target_id"] == str(rec["target_img_id"]) == q.relevant_ids[0]
    assert q.meta["semantic_aspects"] == ["viewpoint", "addition"] and q.category is None
    assert q.item.text == rec["relative_caption"] and q.meta["shared_concept"] == "a teddy bear"
    assert q.item.image == task.corpus[task.corpus_positions[q.reference_id]].image
    assert task.has_labels and task.revision


def test_official_protocol_is_recorded(root: Path) -> None:
    p = circo.load(root, "val", "official").protocol
    assert p.metrics == ("mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@5", "R@10", "R@25", "R@50")
    assert p.ap_normaliser == "min(K,|G|)" and p.top_k == 50
    assert not p.exclude_reference and p.recall_on == "target_id"
    assert "semantic_aspects" in p.notes["per_aspect"]
    assert p.pseudo_token_template == "a photo of $ that {text}" and p.text_template == "{text}"
    assert p.caption_join is None


def test_metrics_match_the_server_code(root: Path) -> None:
    task = circo.load(root, "val", "official")
    expected = server_metrics(val_records(image_ids()), image_ids())
    got = task_metrics(task)
    for e, g in zip(expected, got, strict=True):
        assert g == pytest.approx(e)
    assert 0 < expected[0][5] < expected[0][50] < 1  # not vacuous: the reference holds rank 1


def test_reference_excluded_variant(root: Path) -> None:
    official = circo.load(root, "val", "official")
    excluded = circo.load(root, "val", "reference-excluded")
    assert excluded.protocol.exclude_reference and "CoVR" in excluded.protocol.notes["reference"]
    assert all(ex == [] for ex in query_exclusions(official))
    assert [ex for ex in query_exclusions(excluded)] == [
        [excluded.corpus_positions[q.reference_id or ""]] for q in excluded.queries]
    before, after = task_metrics(official)[0], task_metrics(excluded)[0]
    assert all(after[k] >= before[k] for k in before) and after[5] > before[5]


def test_shared_concept_variant(root: Path) -> None:
    task = circo.load(root, "val", "shared-concept")
    assert task.queries[0].item.text == "find a teddy bear but is held by 0 little girls on a chair"
    assert task.protocol.caption_join == "shared-concept" and task.protocol.pseudo_token_template is None
    assert "MagicLens" in task.protocol.notes["text"]
    both = circo.load(root, "val", "shared-concept+reference-excluded")
    assert both.protocol.exclude_reference and (both.queries[0].item.text or "").startswith("find a teddy")


def test_test_split(root: Path) -> None:
    task = circo.load(root, "test", "official")
    task.validate()
    assert not task.has_labels and [q.id for q in task.queries] == ["0", "1", "2", "3"]
    assert all(q.relevant_ids == () and "target_id" not in q.meta for q in task.queries)


def test_images_are_never_opened(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Items hold paths; loading must not read image files (123k of them in the real gallery)."""
    (root / "COCO2017_unlabeled" / "unlabeled2017" / f"{image_ids()[5]:012d}.jpg").write_bytes(b"not a jpeg")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was opened at load time")

    monkeypatch.setattr(Image, "open", refuse)
    task = circo.load(root, "val", "official")
    assert len(task.corpus) == N_IMAGES


def test_missing_images_and_coco_dir(root: Path, tmp_path: Path) -> None:
    ids = image_ids()
    for i in ids[:2]:
        (root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        circo.load(root, "val", "official")
    assert f"2 of {N_IMAGES} images" in str(e.value) and f"{ids[0]:012d}.jpg" in str(e.value)
    assert "image_info_unlabeled2017.json" in str(e.value)  # the layout is shown
    moved = tmp_path / "elsewhere" / "COCO2017_unlabeled"
    moved.parent.mkdir()
    (root / "COCO2017_unlabeled").rename(moved)
    with pytest.raises(DatasetError, match="annotation file is missing"):
        circo.load(root, "val", "official")
    task = circo.load(root, "val", "official", coco_dir=str(moved), check_images="false")
    assert task.corpus[0].image.parent == moved / "unlabeled2017"  # type: ignore[union-attr]


def test_bad_annotations_are_named(root: Path) -> None:
    path = root / "annotations" / "val.json"
    records = json.loads(path.read_text())
    records[1]["gt_img_ids"] = [records[1]["target_img_id"], "123"]
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError) as e:
        circo.load(root, "val", "official")
    assert e.value.field == "gt_img_ids" and e.value.record == 1
    records[1]["gt_img_ids"] = [records[1]["target_img_id"], 999_999_999]
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match="not in image_info"):
        circo.load(root, "val", "official")
    info = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.write_text('{"images": [{"file_name": "x.jpg"}]}')
    with pytest.raises(DatasetError) as e:
        circo.load(root, "val", "official")
    assert e.value.field == "id"
