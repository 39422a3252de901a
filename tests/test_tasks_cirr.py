"""CIRR loader: the released rc2 files (quirks included), both directory layouts, and SEARLE parity.

The expected metric values come from a re-statement of SEARLE's `cirr_compute_val_metrics` run on the
raw JSON; the Task must reproduce them through its own fields (reference exclusion, candidate subset).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirbench.core.types import DatasetError, Task, query_exclusions
from cirbench.tasks import cirr
from cirbench.tasks.registry import get_task


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def _val_records() -> tuple[list[dict], list[str]]:
    """Pairs over 4 img_sets of 6 members (reference and target inside), plus gallery-only images."""
    records: list[dict] = []
    images: list[str] = []
    for s in range(4):
        members = [f"dev-{s * 10 + k}-{k % 4}-img{k % 2}" for k in range(6)]
        members = members[3:] + members[:3]  # the reference is not always first
        images += members
        for a, b in ((0, 1), (1, 2), (2, 0), (0, 3)):
            records.append({
                "pairid": 12060 + len(records), "reference": members[a], "target_hard": members[b],
                "target_soft": {members[b]: 1.0},
                "caption": f"show {s} more dogs.", "img_set": {
                    "id": 36 + s, "members": members, "reference_rank": a, "target_rank": b},
            })
    # quirks seen in cap.rc2.val.json: target_soft naming the reference, -1.0 and 0.5 entries
    records[1]["target_soft"] = {records[1]["reference"]: 1.0, records[1]["target_hard"]: 0.5,
                                 records[2]["reference"]: -1.0}
    records[2]["caption"] = "Fewer paper towels per pack  "
    images += [f"dev-{900 + i}-0-img{i % 2}" for i in range(6)]
    return records, images


def _test1_records() -> tuple[list[dict], list[str]]:
    records: list[dict] = []
    images: list[str] = []
    for s in range(2):
        members = [f"test1-{s * 10 + k}-{k % 4}-img{k % 2}" for k in range(6)]
        images += members
        for a in (0, 2, 4):
            records.append({"pairid": 13000 + len(records), "reference": members[a],
                            "caption": "remove all but one dog and add a woman hugging   it",
                            "img_set": {"id": 1 + s, "members": members, "reference_rank": a}})
    images += [f"test1-{500 + i}-1-img0" for i in range(50)]
    return records, images


def _train_records() -> tuple[list[dict], dict[str, str]]:
    members = [f"train-{11041 + k}-{k % 4}-img{k % 2}" for k in range(6)]
    rel = {m: f"./train/{(k * 17) % 100}/{m}.png" for k, m in enumerate(members)}
    records = [{"pairid": 1, "reference": members[0], "target_hard": members[1],
                "target_soft": {members[1]: 1.0}, "caption": "add a wooden log",
                "img_set": {"id": 0, "members": members, "reference_rank": 0, "target_rank": 1}}]
    return records, rel


def write_cirr(root: Path, layout: str = "readme") -> Path:
    """Write the three rc2 splits in the README ('readme') or SEARLE ('searle') layout; return data-dir."""
    ann = root if layout == "readme" else root / "cirr"
    img_root = root / "img_raw" if layout == "readme" else root
    (ann / "captions").mkdir(parents=True, exist_ok=True)
    (ann / "image_splits").mkdir(parents=True, exist_ok=True)
    splits: dict[str, tuple[list[dict], dict[str, str]]] = {}
    recs, imgs = _val_records()
    splits["val"] = (recs, {n: f"./dev/{n}.png" for n in imgs})
    recs, imgs = _test1_records()
    splits["test1"] = (recs, {n: f"./test1/{n}.png" for n in imgs})
    splits["train"] = _train_records()
    for split, (recs, rel) in splits.items():
        (ann / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(recs))
        (ann / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(rel, indent=4))
        for r in rel.values():
            p = img_root / r
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(PNG)
    return root


@pytest.fixture
def readme_root(tmp_path: Path) -> Path:
    return write_cirr(tmp_path / "data" / "cirr", "readme")


def _score(qid: str, ref: str, name: str) -> float:
    """A fixed similarity; the reference scores highest, as it does for real models."""
    if name == ref:
        return 2.0
    return int(hashlib.sha1(f"{qid}|{name}".encode()).hexdigest()[:8], 16) / 2**32


# -- reference computation: SEARLE's cirr_compute_val_metrics, restated on the raw files ------------------


def searle_cirr_metrics(records: list[dict], index_names: list[str]) -> dict[str, float]:
    sims = np.array([[_score(str(r["pairid"]), r["reference"], n) for n in index_names] for r in records])
    sorted_names = np.array(index_names)[np.argsort(1 - sims, axis=-1, kind="stable")]
    refs = np.array([r["reference"] for r in records])
    keep = sorted_names != refs[:, None]
    sorted_names = sorted_names[keep].reshape(len(records), -1)
    labels = sorted_names == np.array([r["target_hard"] for r in records])[:, None]
    members = np.array([r["img_set"]["members"] for r in records])
    group_mask = (sorted_names[..., None] == members[:, None, :]).sum(-1).astype(bool)
    group_labels = labels[group_mask].reshape(len(records), -1)
    assert (labels.sum(-1) == 1).all() and (group_labels.sum(-1) == 1).all()
    out = {f"R@{k}": labels[:, :k].sum() / len(labels) * 100 for k in (1, 5, 10, 50)}
    out |= {f"R_s@{k}": group_labels[:, :k].sum() / len(labels) * 100 for k in (1, 2, 3)}
    out["Avg"] = (out["R@5"] + out["R_s@1"]) / 2
    return out


# -- what the Task says: rank by its own exclusions and candidate subsets ------------------------------


def task_rankings(task: Task) -> tuple[list[list[str]], list[list[str]]]:
    excluded = query_exclusions(task)
    full, subset = [], []
    for q, ex in zip(task.queries, excluded, strict=True):
        drop = {task.corpus[i].id for i in ex}
        allowed = [it.id for it in task.corpus if it.id not in drop]
        s = np.array([_score(q.id, q.reference_id or "", c) for c in allowed])
        ranked = [allowed[j] for j in np.argsort(-s, kind="stable")]
        full.append(ranked)
        cands = set(q.candidate_ids or ())
        subset.append([c for c in ranked if c in cands])
    return full, subset


def task_metrics(task: Task) -> dict[str, float]:
    full, subset = task_rankings(task)
    n = len(task.queries)
    hit = [q.relevant_ids[0] for q in task.queries]
    def recall(rankings: list[list[str]], k: int) -> float:
        return 100 * sum(t in r[:k] for t, r in zip(hit, rankings, strict=True)) / n

    out = {f"R@{k}": recall(full, k) for k in (1, 5, 10, 50)}
    out |= {f"R_s@{k}": recall(subset, k) for k in (1, 2, 3)}
    out["Avg"] = (out["R@5"] + out["R_s@1"]) / 2
    return out


# -- tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["readme", "searle"])
def test_both_layouts_load_the_same_task(tmp_path: Path, layout: str) -> None:
    root = write_cirr(tmp_path / layout, layout)
    task = cirr.load(root, "val", "official")
    task.validate()
    records, images = _val_records()
    assert [it.id for it in task.corpus] == images  # split.rc2.val.json order, as SEARLE indexes it
    assert all(isinstance(it.image, Path) and it.image.is_file() for it in task.corpus)
    assert isinstance(task.corpus[0].image, Path) and task.corpus[0].image.parent.name == "dev"
    assert task.extra["layout"] == layout
    assert [q.id for q in task.queries] == [str(r["pairid"]) for r in records]
    q, r = task.queries[0], records[0]
    assert q.item.text == r["caption"]
    assert q.item.image == task.corpus[task.corpus_positions[r["reference"]]].image
    assert q.relevant_ids == (r["target_hard"],) and q.reference_id == r["reference"]
    assert q.candidate_ids is not None and len(q.candidate_ids) == 5 and r["reference"] not in q.candidate_ids
    assert set(q.candidate_ids) == set(r["img_set"]["members"]) - {r["reference"]}
    assert q.meta["target_soft"] == r["target_soft"] and q.meta["img_set_id"] == 36
    assert task.has_labels and task.revision and task.revision.startswith("sha1:")


def test_readme_clone_one_level_down(tmp_path: Path) -> None:
    """`--data-dir data` where the README clone lives in data/cirr with data/cirr/img_raw."""
    write_cirr(tmp_path / "data" / "cirr", "readme")
    task = cirr.load(tmp_path / "data", "val", "official")
    assert all(it.image.is_file() for it in task.corpus)  # type: ignore[union-attr]


def test_official_protocol_is_recorded(readme_root: Path) -> None:
    p = cirr.load(readme_root, "val", "official").protocol
    assert p.name == "official" and p.exclude_reference
    assert p.metrics == ("R@1", "R@5", "R@10", "R@50", "R_s@1", "R_s@2", "R_s@3", "Avg")
    assert p.top_k == 50 and p.pseudo_token_template == "a photo of $ that {text}"
    assert "target_hard" in p.notes["relevance"] and "5 candidates" in p.notes["recall_subset"]
    assert p.to_dict()["notes"]["Avg"].startswith("(R@5 + R_s@1)")


def test_metrics_match_searle_on_hand_built_rankings(readme_root: Path) -> None:
    task = cirr.load(readme_root, "val", "official")
    records, images = _val_records()
    expected = searle_cirr_metrics(records, images)
    got = task_metrics(task)
    assert got == pytest.approx(expected)
    assert 0 < expected["R@1"] < 100  # the comparison is not vacuous


def test_reference_kept_variant_changes_what_is_ranked(readme_root: Path) -> None:
    official = cirr.load(readme_root, "val", "official")
    kept = cirr.load(readme_root, "val", "reference-kept")
    assert not kept.protocol.exclude_reference and "NOT the official" in kept.protocol.notes["reference"]
    assert all(len(q.candidate_ids or ()) == 6 for q in kept.queries)
    assert all(ex == [] for ex in query_exclusions(kept))
    assert all(len(ex) == 1 for ex in query_exclusions(official))
    full, subset = task_rankings(kept)
    assert all(r[0] == q.reference_id for r, q in zip(full, kept.queries, strict=True))
    assert task_metrics(kept)["R@1"] == 0.0


def test_test1_has_no_targets(readme_root: Path) -> None:
    task = cirr.load(readme_root, "test1", "official")
    task.validate()
    assert not task.has_labels
    assert all(q.relevant_ids == () and len(q.candidate_ids or ()) == 5 for q in task.queries)
    assert task.corpus[0].image.parent.name == "test1"  # type: ignore[union-attr]


def test_train_subfolders(readme_root: Path) -> None:
    task = cirr.load(readme_root, "train", "official")
    parents = {it.image.parent.name for it in task.corpus}  # type: ignore[union-attr]
    assert parents == {str((k * 17) % 100) for k in range(6)}
    assert all(it.image.is_file() for it in task.corpus)  # type: ignore[union-attr]


def test_missing_images_are_counted_and_named(readme_root: Path) -> None:
    _, images = _val_records()
    for name in images[:7]:
        (readme_root / "img_raw" / "dev" / f"{name}.png").unlink()
    with pytest.raises(DatasetError) as e:
        cirr.load(readme_root, "val", "official")
    msg = str(e.value)
    assert f"7 of {len(images)} images" in msg and f"dev/{images[0]}.png" in msg and "2 more" in msg
    assert "CIRR README" in msg and "check_images=false" in msg
    task = cirr.load(readme_root, "val", "official", check_images="false")
    assert len(task.corpus) == len(images)


def test_missing_annotations_name_the_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="SEARLE"):
        cirr.load(tmp_path / "empty", "val", "official")
    root = write_cirr(tmp_path / "x")
    (root / "captions" / "cap.rc2.val.json").unlink()
    with pytest.raises(DatasetError, match=r"cap\.rc2\.val\.json"):
        cirr.load(root, "val", "official")


def test_bad_records_name_file_record_and_field(readme_root: Path) -> None:
    path = readme_root / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    records[3]["pairid"] = "12063"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError) as e:
        cirr.load(readme_root, "val", "official")
    assert e.value.field == "pairid" and e.value.record == 3 and "cap.rc2.val.json" in str(e.value)
    records[3]["pairid"] = 12063
    records[5]["img_set"]["members"][2] = "dev-99999-0-img0"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError) as e:
        cirr.load(readme_root, "val", "official")
    assert e.value.field == "img_set.members" and e.value.record == records[5]["pairid"]
    del records[5]["target_hard"]
    records[5]["img_set"]["members"][2] = records[5]["reference"]
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match="required field is missing"):
        cirr.load(readme_root, "val", "official")


def test_data_dir_from_environment(readme_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIRBENCH_DATA", raising=False)
    with pytest.raises(DatasetError, match="CIRBENCH_DATA"):
        get_task("cirr", "val")
    monkeypatch.setenv("CIRBENCH_DATA", str(readme_root.parent))  # $CIRBENCH_DATA/cirr
    task = get_task("cirr", "val", limit=3)
    assert len(task.queries) == 3 and len(task.corpus) == 30


def test_options_and_protocols_are_checked(readme_root: Path) -> None:
    with pytest.raises(ValueError, match="check_image"):
        cirr.load(readme_root, "val", "official", check_image="false")
    with pytest.raises(ValueError, match="reference-kept"):
        cirr.load(readme_root, "val", "nonsense")
    assert cirr.SPEC.protocols == ("official", "reference-kept")
    assert cirr.SPEC.submission is cirr.write_submission
