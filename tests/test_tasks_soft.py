"""SoFT's multi-/single-target CIRR-val and FashionIQ-val: selection files, base galleries, both mAPs.

Metric references transcribe jjungyujin/SoFT `src/compute_results.py` (`compute_map_at_k`,
`get_fiq_metrics`) and CIRCO's min(K, |G|) AP, independently of cirbench.core.metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cirbench.core.run import Run
from cirbench.core.scoring import per_query_values
from cirbench.core.types import DatasetError, Task, query_exclusions
from cirbench.tasks import get_task

from .conftest import png

CIRR_IMAGES = [f"dev-{i}-0-img{i % 2}" for i in range(60)]
FIQ_DRESS = [f"B00DRESS{i:02d}" for i in range(55)]
FIQ_SHIRT = [f"B00SHIRT{i:02d}" for i in range(52)]
PNG = png((1, 2, 3), 2)


def _json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_cirr(root: Path) -> None:
    _json(root / "image_splits" / "split.rc2.val.json", {n: f"./dev/{n}.png" for n in CIRR_IMAGES})
    _json(root / "captions" / "cap.rc2.val.json", [
        {"pairid": 0, "reference": CIRR_IMAGES[0], "caption": "c", "target_hard": CIRR_IMAGES[1],
         "target_soft": {}, "img_set": {"id": 0, "members": CIRR_IMAGES[:6]}}])
    (root / "img_raw" / "dev").mkdir(parents=True)
    for n in CIRR_IMAGES:
        (root / "img_raw" / "dev" / f"{n}.png").write_bytes(PNG)


def write_fashioniq(root: Path) -> None:
    for cat, names in (("dress", FIQ_DRESS), ("shirt", FIQ_SHIRT), ("toptee", ["B00TOPTEE0", "B00TOPTEE1"])):
        _json(root / "image_splits" / f"split.{cat}.val.json", names)
        _json(root / "captions" / f"cap.{cat}.val.json",
              [{"candidate": names[0], "target": names[1], "captions": ["a", "b"]}])
        (root / "images").mkdir(parents=True, exist_ok=True)
        for n in names:
            (root / "images" / f"{n}.png").write_bytes(PNG)


C = CIRR_IMAGES
CIRR_MULTI = [
    {"reference_image_name": C[0], "threshold": 0.85, "target_image_name": C[1],
     "relative_captions": "Different dog and has a toy",
     "confidence_scores": {C[1]: 0.95, C[2]: 0.9, C[0]: 1.0}},  # lists its own reference
    {"reference_image_name": C[3], "threshold": 0.85, "target_image_name": C[4],
     "relative_captions": "Make it sit", "confidence_scores": {C[5]: 0.85, C[6]: 0.9}},
    {"reference_image_name": C[7], "threshold": 0.85, "target_image_name": C[8],
     "relative_captions": "Add a cat", "confidence_scores": {C[8]: 0.8}},  # below the threshold: kept
]
CIRR_SINGLE = [
    {"reference_image_name": C[0], "target_image_name": C[2], "original_target": C[1],
     "original_captions": "Different dog and has a toy", "refined_caption": "A different dog with a toy.",
     "comparison_images": [C[1], C[0]], "target_confidence": 0.9,
     "original_confidence_scores": {C[1]: 0.95, C[2]: 0.9, C[0]: 1.0}},
    {"reference_image_name": C[3], "target_image_name": C[6], "original_target": C[4],
     "original_captions": "Make it sit", "refined_caption": "Make it sit on grass.",
     "comparison_images": [C[5]], "target_confidence": 0.9, "original_confidence_scores": {}},
]
D, S = FIQ_DRESS, FIQ_SHIRT
FIQ_MULTI = {
    "dress": [{"reference_image_name": D[0], "threshold": 0.85, "target_image_name": D[1],
               "relative_captions": ["Is a darker color.", "has no sleeves"],
               "confidence_scores": {D[1]: 0.95, D[2]: 0.9, D[3]: 0.85}}],
    "shirt": [{"reference_image_name": S[0], "threshold": 0.85, "target_image_name": S[1],
               "relative_captions": ["is blue", "is longer"], "confidence_scores": {S[4]: 0.9}}],
    "toptee": [],
}
FIQ_SINGLE = {
    "dress": [{"reference_image_name": D[0], "target_image_name": D[2], "original_target": D[1],
               "original_captions": ["Is a darker color.", "has no sleeves"],
               "refined_caption": "is darker, sleeveless and knee length", "comparison_images": [D[1], D[3]],
               "target_confidence": 0.9, "original_confidence_scores": {}}],
    "shirt": [],
    "toptee": [],
}


def write_soft(root: Path) -> Path:
    """The repo's selection files plus the two base benchmarks under <root>/cirr and <root>/fashioniq."""
    write_cirr(root / "cirr")
    write_fashioniq(root / "fashioniq")
    sel = root / "mt_pipeline" / "llm"  # the repo layout
    _json(sel / "multi_target_selection" / "cirr_multi_target_selection.json", CIRR_MULTI)
    _json(sel / "single_target_selection" / "cirr_selection_single_target_final.json", CIRR_SINGLE)
    for cat in ("dress", "shirt", "toptee"):
        _json(sel / "multi_target_selection" / f"{cat}_multi_target_selection.json", FIQ_MULTI[cat])
        _json(sel / "single_target_selection" / f"{cat}_selection_single_target_seed42.json", FIQ_SINGLE[cat])
    return root


@pytest.fixture
def soft_dir(tmp_path: Path) -> Path:
    return write_soft(tmp_path / "soft")


def test_cirr_multi(soft_dir: Path) -> None:
    task = get_task("soft-cirr-multi", data_dir=soft_dir)
    assert task.protocol.name == "hits" and task.protocol.ap_normaliser == "hits"
    assert len(task.corpus) == 60
    assert task.corpus[0].image == soft_dir / "cirr" / "img_raw" / "dev" / f"{C[0]}.png"
    q0 = task.queries[0]
    assert q0.relevant_ids == (C[1], C[2], C[0]) and q0.reference_id == C[0]
    assert q0.item.text == "Different dog and has a toy" and q0.item.image == task.corpus[0].image
    assert query_exclusions(task)[0] == []  # SoFT keeps the reference: here it is even a target
    assert task.queries[1].meta["original_target"] == C[4]
    assert task.extra["targets_below_threshold"] == 1
    assert task.protocol.metrics == ("mAP@5", "mAP@10", "mAP@25", "mAP@50")
    circo = get_task("soft-cirr-multi", data_dir=soft_dir, protocol="circo")
    assert circo.protocol.ap_normaliser == "min(K,|G|)"


def test_cirr_single(soft_dir: Path) -> None:
    task = get_task("soft-cirr-single", data_dir=soft_dir)
    q0 = task.queries[0]
    assert q0.relevant_ids == (C[2],) and q0.item.text == "A different dog with a toy."
    assert q0.hard_negative_ids == (C[1], C[0])
    assert task.protocol.metrics == ("R@1", "R@5", "R@10", "R@50") and not task.protocol.exclude_reference


def test_fashioniq_variants(soft_dir: Path) -> None:
    task = get_task("soft-fashioniq-multi", data_dir=soft_dir)
    assert [q.id for q in task.queries] == ["dress-0", "shirt-0"]
    q = task.queries[0]
    assert q.gallery == "dress" and q.category == "dress"
    assert q.relevant_ids == (D[1], D[2], D[3])
    assert q.item.text == "Is a darker color and has no sleeves"  # both-orders join, stripped
    assert [a.text for a in q.alt_items] == ["has no sleeves and Is a darker color"]
    assert task.galleries is not None and len(task.galleries["dress"]) == 55
    cireVL = get_task("soft-fashioniq-multi", data_dir=soft_dir, caption_join="c1-and-c2")
    assert cireVL.queries[0].alt_items == () and cireVL.protocol.caption_join == "c1-and-c2"
    single = get_task("soft-fashioniq-single", data_dir=soft_dir, categories="dress")
    assert [q.relevant_ids for q in single.queries] == [(D[2],)]
    assert single.queries[0].item.text == "is darker, sleeveless and knee length"
    assert single.queries[0].hard_negative_ids == (D[1], D[3])


@pytest.mark.parametrize("case, pattern", [
    ("target", r"image 'dev-99' is not in CIRR's val image split.*cirr_multi_target_selection.json.*record 1"
               r".*field 'confidence_scores'"),
    ("reference", r"image 'nope' is not in.*record 0.*field 'reference_image_name'"),
    ("captions", r"expected a caption.*record 0.*field 'relative_captions'"),
])
def test_bad_selection(soft_dir: Path, case: str, pattern: str) -> None:
    rows = json.loads(json.dumps(CIRR_MULTI))
    if case == "target":
        rows[1]["confidence_scores"]["dev-99"] = 0.9
    elif case == "reference":
        rows[0]["reference_image_name"] = "nope"
    else:
        rows[0]["relative_captions"] = 3
    sel = soft_dir / "mt_pipeline" / "llm" / "multi_target_selection"
    _json(sel / "cirr_multi_target_selection.json", rows)
    with pytest.raises(DatasetError, match=pattern):
        get_task("soft-cirr-multi", data_dir=soft_dir)


def test_missing_base_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIRBENCH_DATA", raising=False)
    (tmp_path / "s").mkdir()
    with pytest.raises(DatasetError, match="base_dir"):
        get_task("soft-cirr-multi", data_dir=tmp_path / "s")


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------


def soft_map_at_k(labels: np.ndarray, k: int) -> float:
    """SoFT compute_map_at_k without the final rounding."""
    aps = []
    for i in range(labels.shape[0]):
        relevant = labels[i][:k]
        if not np.any(relevant):
            aps.append(0.0)
            continue
        precision_at_i = [np.sum(relevant[: j + 1]) / (j + 1) for j in range(k) if relevant[j]]
        aps.append(np.mean(precision_at_i) if precision_at_i else 0.0)
    return float(np.mean(aps))


def circo_map_at_k(labels: np.ndarray, n_gt: list[int], k: int) -> float:
    aps = []
    for row, g in zip(labels, n_gt, strict=True):
        hits = row[:k]
        prec = np.cumsum(hits) / np.arange(1, k + 1)
        aps.append(float((prec * hits).sum() / min(k, g)))
    return float(np.mean(aps))


def _random_run(task: Task, seed: int) -> tuple[Run, np.ndarray]:
    """A random full ranking per query, with some targets pushed to the top (full gallery, reference kept)."""
    rng = np.random.default_rng(seed)
    pos = task.corpus_positions
    n = len(task.corpus)
    indices = np.zeros((len(task.queries), 50), dtype=np.int64)
    full = []
    for qi, q in enumerate(task.queries):
        order = list(rng.permutation(n))
        for t in q.relevant_ids[: qi % 3]:
            order.remove(pos[t])
            order.insert(int(rng.integers(0, 8)), pos[t])
        full.append(order)
        indices[qi] = order[:50]
    run = Run([q.id for q in task.queries], [it.id for it in task.corpus], indices,
              np.zeros(indices.shape, dtype=np.float32))
    return run, np.array(full)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_target_map_matches_soft_and_circo(soft_dir: Path, seed: int) -> None:
    for protocol in ("hits", "circo"):
        task = get_task("soft-cirr-multi", data_dir=soft_dir, protocol=protocol)
        run, full = _random_run(task, seed)
        names = np.array([it.id for it in task.corpus])
        labels = np.stack([np.isin(names[row], q.relevant_ids)
                           for row, q in zip(full, task.queries, strict=True)])
        vals = per_query_values(run.to_table(task), task.protocol.to_dict())
        for k in (5, 10, 25, 50):
            want = (soft_map_at_k(labels, k) if protocol == "hits" else
                    circo_map_at_k(labels, [len(q.relevant_ids) for q in task.queries], k))
            assert float(np.mean(vals[f"mAP@{k}"])) == pytest.approx(want, abs=1e-12), (protocol, k)


def test_single_target_recall_matches_soft(soft_dir: Path) -> None:
    task = get_task("soft-cirr-single", data_dir=soft_dir)
    run, full = _random_run(task, 5)
    names = np.array([it.id for it in task.corpus])
    targets = [q.relevant_ids[0] for q in task.queries]
    labels = names[full] == np.repeat(np.array(targets), len(names)).reshape(len(targets), -1)
    assert (labels.sum(axis=1) == 1).all()  # get_fiq_metrics' assertion
    vals = per_query_values(run.to_table(task), task.protocol.to_dict())
    for k in (1, 5, 10, 50):
        assert 100 * float(np.mean(vals[f"R@{k}"])) == pytest.approx(100 * labels[:, :k].sum() / len(labels))
