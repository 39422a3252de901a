"""FashionIQ loader: per-category galleries, the caption-join rules, gallery protocols, SEARLE parity.

The expected R@10/R@50 come from a re-statement of SEARLE's fiq_val_retrieval (strip '.?, ', encode both
orders, average the normalised vectors, rank the category's val split) on the raw JSON, with a fixed fake
encoder; the Task must reproduce them from its items, alt_items and galleries.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirbench.core.types import DatasetError, Item, Task, query_exclusions
from cirbench.tasks import fashioniq

CATS = ("dress", "shirt", "toptee")
LETTER = {"dress": "D", "shirt": "S", "toptee": "T"}
N_GALLERY = 60
QUIRKY = [[" green", "has more buttons."], ["The shirt is pink with dark stripes.", "is pink, "],
          ["Is  lighter?", " and is a lighter color"]]


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 3), (250, 250, 0)).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPG = _encode("PNG"), _encode("JPEG")


def asin(cat: str, i: int) -> str:
    return f"B0{LETTER[cat]}{i:07d}"


def val_records(cat: str) -> list[dict]:
    recs = []
    for n in range(9):
        caps = QUIRKY[n % 3] if n < 3 else [f"is {cat} number {n}", f"has {n} pockets"]
        recs.append({"target": asin(cat, (5 * n + 7) % N_GALLERY), "candidate": asin(cat, 3 * n),
                     "captions": caps})
    return recs


def write_fiq(root: Path) -> Path:
    """Annotations of all three splits in the released format; images alternate .png / .jpg."""
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    for cat in CATS:
        val_ids = [asin(cat, i) for i in range(N_GALLERY)]
        train_ids = [asin(cat, 1000 + i) for i in range(10)]
        test_ids = [asin(cat, 2000 + i) for i in range(8)]
        splits = {"val": val_ids, "train": train_ids, "test": test_ids}
        caps = {
            "val": val_records(cat),
            "train": [{"target": train_ids[i + 1], "candidate": train_ids[i],
                       "captions": ["is red", "is long"]} for i in range(4)],
            "test": [{"candidate": test_ids[i], "captions": ["is darker", " hooded"]} for i in (0, 3, 3)],
        }
        for split in splits:
            (root / "image_splits" / f"split.{cat}.{split}.json").write_text(json.dumps(splits[split]))
            (root / "captions" / f"cap.{cat}.{split}.json").write_text(json.dumps(caps[split], indent=4))
            for i, a in enumerate(splits[split]):
                (root / "images" / (f"{a}.png" if i % 2 == 0 else f"{a}.jpg")).write_bytes(
                    PNG if i % 2 == 0 else JPG)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_fiq(tmp_path / "fashionIQ_dataset")


# -- a fixed fake encoder: image vectors from the ASIN, text vectors from the exact string ---------------


def _vec(key: str) -> np.ndarray:
    seed = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    v = np.random.default_rng(seed).standard_normal(16)
    return v / np.linalg.norm(v)


def encode_query(reference: str, text: str) -> np.ndarray:
    v = 0.6 * _vec("img:" + reference) + _vec("txt:" + text)
    return v / np.linalg.norm(v)


def asin_of(item: Item) -> str:
    assert isinstance(item.image, Path)
    return item.image.stem


# -- reference computation: SEARLE's fiq_val_retrieval on the raw files ----------------------------------


def searle_fiq(root: Path, cat: str) -> dict[str, float]:
    triplets = json.loads((root / "captions" / f"cap.{cat}.val.json").read_text())
    index_names = json.loads((root / "image_splits" / f"split.{cat}.val.json").read_text())
    index = np.stack([_vec("img:" + n) for n in index_names])
    preds = []
    for t in triplets:
        c1, c2 = t["captions"]
        fwd = f"{c1.strip('.?, ')} and {c2.strip('.?, ')}"
        rev = f"{c2.strip('.?, ')} and {c1.strip('.?, ')}"
        f, r = encode_query(t["candidate"], fwd), encode_query(t["candidate"], rev)
        p = f / np.linalg.norm(f) + r / np.linalg.norm(r)
        preds.append(p / np.linalg.norm(p))
    distances = 1 - np.stack(preds) @ index.T
    sorted_names = np.array(index_names)[np.argsort(distances, axis=-1, kind="stable")]
    labels = sorted_names == np.array([t["target"] for t in triplets])[:, None]
    assert (labels.sum(-1) == 1).all()
    return {f"R@{k}": labels[:, :k].sum() / len(labels) * 100 for k in (10, 50)}


# -- what the Task says ------------------------------------------------------------------------------------


def task_fiq(task: Task) -> dict[str, dict[str, float]]:
    """Per-category R@10/R@50 from the Task: its items and alt_items, galleries and exclusions."""
    hits: dict[str, list[tuple[bool, bool]]] = {}
    for q, ex in zip(task.queries, query_exclusions(task), strict=True):
        vecs = [encode_query(asin_of(it), it.text or "") for it in (q.item, *q.alt_items)]
        v = np.sum(vecs, axis=0)
        v = v / np.linalg.norm(v)
        gallery = task.galleries[q.gallery] if task.galleries and q.gallery else [it.id for it in task.corpus]
        drop = {task.corpus[i].id for i in ex}
        ids = [g for g in gallery if g not in drop]
        scores = np.stack([_vec("img:" + g) for g in ids]) @ v
        ranked = [ids[i] for i in np.argsort(-scores, kind="stable")]
        target = q.relevant_ids[0]
        hits.setdefault(q.category or "", []).append((target in ranked[:10], target in ranked[:50]))
    return {c: {"R@10": 100 * float(np.mean([h[0] for h in v])),
                "R@50": 100 * float(np.mean([h[1] for h in v]))} for c, v in hits.items()}


# -- tests -------------------------------------------------------------------------------------------------


def test_val_task_fields(root: Path) -> None:
    task = fashioniq.load(root, "val", "official")
    task.validate()
    assert task.galleries is not None and list(task.galleries) == list(CATS)
    assert task.galleries["shirt"] == [asin("shirt", i) for i in range(N_GALLERY)]
    assert len(task.corpus) == 3 * N_GALLERY and len(task.queries) == 27
    q = task.queries[9]
    assert q.id == "shirt-0" and q.category == "shirt" and q.gallery == "shirt"
    assert q.reference_id == asin("shirt", 0) and q.relevant_ids == (asin("shirt", 7),)
    assert q.meta["captions"] == QUIRKY[0]
    paths = [it.image for it in task.corpus if isinstance(it.image, Path)]
    assert {p.suffix for p in paths} == {".png", ".jpg"} and all(p.is_file() for p in paths)
    assert task.queries[1].item.image.suffix == ".jpg"  # type: ignore[union-attr]  # candidate index 3
    assert task.extra["gallery_sizes"] == {c: N_GALLERY for c in CATS}


def test_searle_both_orders_strings(root: Path) -> None:
    qs = fashioniq.load(root, "val", "official").queries
    assert (qs[0].item.text, qs[0].alt_items[0].text) == ("green and has more buttons",
                                                          "has more buttons and green")
    assert qs[1].item.text == "The shirt is pink with dark stripes and is pink"  # inner case kept
    assert qs[2].item.text == "Is  lighter and and is a lighter color"  # only the ends are stripped
    assert qs[0].alt_items[0].image == qs[0].item.image and qs[0].alt_items[0].id == "dress-0#1"


def test_other_join_rules(root: Path) -> None:
    c12 = fashioniq.load(root, "val", "c1-and-c2")
    assert c12.queries[0].item.text == "green and has more buttons" and c12.queries[0].alt_items == ()
    assert c12.protocol.caption_join == "c1-and-c2" and c12.protocol.pseudo_token_template == "{text}"
    c21 = fashioniq.load(root, "val", "c2-and-c1")
    assert c21.queries[0].item.text == "has more buttons. and  green"  # Pic2Word does not strip
    assert c21.protocol.pseudo_token_template == "a photo of * , {text}" and "Pic2Word" in c21.protocol.notes[
        "caption_join"]


def test_official_protocol_is_recorded(root: Path) -> None:
    p = fashioniq.load(root, "val", "official").protocol
    assert p.metrics == ("R@10", "R@50") and not p.exclude_reference
    assert p.gallery == "category-val" and p.caption_join == "both-orders"
    assert p.pseudo_token_template == "a photo of $ that {text}"
    assert "re-normalised" in p.notes["caption_join"]
    assert "CSMCIR" in p.notes["gallery"]


def test_metrics_match_searle(root: Path) -> None:
    task = fashioniq.load(root, "val", "official")
    got = task_fiq(task)
    for cat in CATS:
        expected = searle_fiq(root, cat)
        assert got[cat] == pytest.approx(expected)
    assert 0 < got["dress"]["R@10"] < 100


def test_gallery_protocols(root: Path) -> None:
    union = fashioniq.load(root, "val", "union-val")
    assert union.galleries is None and all(q.gallery is None for q in union.queries)
    assert len(union.corpus) == 3 * N_GALLERY and not union.protocol.exclude_reference
    excluded = fashioniq.load(root, "val", "reference-excluded+c2-and-c1")
    assert excluded.protocol.exclude_reference and excluded.protocol.caption_join == "c2-and-c1"
    assert all(len(ex) == 1 for ex in query_exclusions(excluded))
    pairs = fashioniq.load(root, "val", "val-pairs")
    assert pairs.galleries is not None and pairs.protocol.exclude_reference
    recs = val_records("toptee")
    assert set(pairs.galleries["toptee"]) == {r["candidate"] for r in recs} | {r["target"] for r in recs}
    assert len(pairs.corpus) == sum(len(g) for g in pairs.galleries.values())
    pairs.validate()


def test_train_and_test_splits(root: Path) -> None:
    test = fashioniq.load(root, "test", "official")
    test.validate()
    assert not test.has_labels and all(q.relevant_ids == () for q in test.queries)
    assert [q.id for q in test.queries[:3]] == ["dress-0", "dress-1", "dress-2"]  # repeated candidates
    with pytest.raises(ValueError, match="val-pairs"):
        fashioniq.load(root, "test", "val-pairs")
    train = fashioniq.load(root, "train", "official", categories="shirt")
    assert train.has_labels and list(train.galleries or {}) == ["shirt"] and len(train.queries) == 4


def test_extension_option_and_missing_images(root: Path) -> None:
    with pytest.raises(DatasetError) as e:
        fashioniq.load(root, "val", "official", image_ext="jpg")
    assert f"{asin('dress', 0)}.jpg" in str(e.value) and "images/<ASIN>.png" in str(e.value)
    (root / "images" / f"{asin('toptee', 4)}.png").unlink()
    (root / "images" / f"{asin('toptee', 5)}.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        fashioniq.load(root, "val", "official")
    assert f"2 of {3 * N_GALLERY} images" in str(e.value)
    task = fashioniq.load(root, "val", "official", check_images="no")
    assert len(task.corpus) == 3 * N_GALLERY


def test_bad_files_are_named(root: Path) -> None:
    path = root / "captions" / "cap.shirt.val.json"
    recs = json.loads(path.read_text())
    recs[4]["captions"] = ["only one"]
    path.write_text(json.dumps(recs))
    with pytest.raises(DatasetError) as e:
        fashioniq.load(root, "val", "official")
    assert e.value.record == 4 and e.value.field == "captions" and "cap.shirt.val.json" in str(e.value)
    recs[4]["captions"] = ["a", "b"]
    recs[4]["target"] = "B0X9999999"
    path.write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match="split.shirt.val.json"):
        fashioniq.load(root, "val", "official")
    (root / "image_splits" / "split.dress.val.json").unlink()
    with pytest.raises(DatasetError, match=r"split\.\{dress,shirt,toptee\}"):
        fashioniq.load(root, "val", "official")
    with pytest.raises(ValueError, match="categories"):
        fashioniq.load(root, "val", "official", categories="shoes")
