"""FashionIQ's headline is the mean of the three per-category values (SEARLE's validate.py, every paper),
not the pooled mean over queries; its interval resamples queries within each category. The same for SoFT's
FashionIQ variants. Checked through the eval flow on a fixture whose categories have different sizes, with
vectors chosen so that every hit and miss is known by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cirbench
from cirbench.evaluation import EvalOptions

from .conftest import png

SIZES = {"dress": 6, "shirt": 2, "toptee": 1}  # queries per category: uneven, as in the real val split
HITS = {"dress": 6, "shirt": 0, "toptee": 0}  # how many of them find their target in the top 10
GALLERY = 12  # images per category: a miss ranks its target 12th (outside the top 10, inside the top 50)
CATS = tuple(SIZES)
PNG = png((10, 20, 30), 2)


def asin(cat: str, i: int) -> str:
    return f"B0{cat[0].upper()}{i:07d}"


def write_fiq(root: Path, sizes: dict[str, int] = SIZES) -> Path:
    """FashionIQ val in the released layout: query n of a category has candidate n and target n + 1."""
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for cat in CATS:
        ids = [asin(cat, i) for i in range(GALLERY)]
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))
        caps = [{"candidate": ids[n], "target": ids[n + 1], "captions": ["is red", "is long"]}
                for n in range(sizes[cat])]
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(caps))
        for a in ids:
            (root / "images" / f"{a}.png").write_bytes(PNG)
    return root


def write_vectors(path: Path, hits: dict[str, int], query_ids: dict[str, list[str]]) -> Path:
    """Corpus: one axis per image. A hit points at its target's axis (rank 1); a miss points at every
    other image of its category, so its target scores 0 and ranks last (12th)."""
    axes = {asin(c, i): len(CATS) * i + k for k, c in enumerate(CATS) for i in range(GALLERY)}
    dim = len(axes)
    rows: list[tuple[str, str, list[float]]] = []
    for cid, ax in axes.items():
        rows.append((cid, "document", list(np.eye(dim)[ax])))
    for cat, qids in query_ids.items():
        for n, qid in enumerate(qids):
            target = asin(cat, n + 1)
            v = np.zeros(dim)
            if n < hits[cat]:
                v[axes[target]] = 1.0
            else:
                for i in range(GALLERY):
                    if asin(cat, i) != target:
                        v[axes[asin(cat, i)]] = 1.0
            for suffix in ("", "#1"):  # the both-orders join adds one alternative phrasing per query
                rows.append((qid + suffix, "query", list(v)))
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), path)
    return path


def test_fashioniq_average_is_the_mean_of_the_categories(tmp_path: Path) -> None:
    root = write_fiq(tmp_path / "fiq")
    qids = {c: [f"{c}-{n}" for n in range(SIZES[c])] for c in CATS}
    vectors = write_vectors(tmp_path / "v.parquet", HITS, qids)
    result = cirbench.evaluate(f"precomputed:{vectors}", "fashioniq", data_dir=root, output=tmp_path / "o",
                               options=EvalOptions(progress=False, n_bootstrap=400))
    per_cat = {c: result.scores["category"][c]["R@10"].value for c in CATS}
    assert per_cat == {"dress": 1.0, "shirt": 0.0, "toptee": 0.0}
    r10 = result.overall["R@10"]
    # pooled over queries this would be 6/9 = 0.667; the benchmark's average is (1 + 0 + 0) / 3
    assert r10.value == pytest.approx(1 / 3)
    assert r10.n == 9
    # each category is constant, so resampled within its category the mean cannot move
    assert (r10.ci_low, r10.ci_high) == pytest.approx((1 / 3, 1 / 3))
    assert result.overall["R@50"].value == 1.0
    assert result.protocol["aggregate"] == "categories"
    assert "mean of the loaded categories" in result.protocol["notes"]["aggregate"]
    assert "within each category" in result.bootstrap["method"]


def test_soft_fashioniq_average_is_the_mean_of_the_categories(tmp_path: Path) -> None:
    base = write_fiq(tmp_path / "soft" / "fashioniq")
    sel = tmp_path / "soft" / "single_target_selection"
    sel.mkdir(parents=True)
    counts = {"dress": 2, "shirt": 1, "toptee": 0}  # toptee has no query: the mean is over dress, shirt
    for cat in CATS:
        recs = [{"reference_image_name": asin(cat, n), "target_image_name": asin(cat, n + 1),
                 "refined_caption": f"is red {n}", "comparison_images": []} for n in range(counts[cat])]
        (sel / f"{cat}_selection_single_target_final.json").write_text(json.dumps(recs))
    qids = {c: [f"{c}-{n}" for n in range(counts[c])] for c in CATS}
    vectors = write_vectors(tmp_path / "v.parquet", {"dress": 2, "shirt": 0, "toptee": 0}, qids)
    result = cirbench.evaluate(f"precomputed:{vectors}", "soft-fashioniq-single", data_dir=tmp_path / "soft",
                               output=tmp_path / "o", task_options={"base_dir": str(base)},
                               options=EvalOptions(progress=False, n_bootstrap=100))
    assert result.scores["category"]["dress"]["R@1"].value == 1.0
    assert result.scores["category"]["shirt"]["R@1"].value == 0.0
    assert result.overall["R@1"].value == pytest.approx(0.5)  # pooled: 2/3
    assert result.protocol["aggregate"] == "categories"


def test_compare_averages_the_category_differences(tmp_path: Path) -> None:
    """`cirbench compare` on FashionIQ: B - A is the mean of the per-category differences."""
    from typer.testing import CliRunner

    from cirbench.cli import app

    root = write_fiq(tmp_path / "fiq")
    qids = {c: [f"{c}-{n}" for n in range(SIZES[c])] for c in CATS}
    weak = write_vectors(tmp_path / "weak.parquet", HITS, qids)
    strong = write_vectors(tmp_path / "strong.parquet", SIZES, qids)  # every query hits
    runner = CliRunner()
    for name, vectors in (("a", weak), ("b", strong)):
        res = runner.invoke(app, ["eval", "-m", f"precomputed:{vectors}", "-t", "fashioniq", "--data-dir",
                                  str(root), "-o", str(tmp_path / name), "-q", "--bootstrap", "0"])
        assert res.exit_code == 0, res.output
    from cirbench.compare import compare_results
    from cirbench.core.result import Result

    tests, _ = compare_results(Result.read(tmp_path / "a"), Result.read(tmp_path / "b"), n_resamples=200)
    r10 = next(t for t in tests if t.metric == "R@10")
    # per category B - A: dress 0, shirt +1, toptee +1 -> mean 2/3 (pooled over queries it would be 3/9)
    assert r10.diff == pytest.approx(2 / 3)
    assert r10.mean_a == pytest.approx(1 / 3) and r10.mean_b == pytest.approx(1.0)
    assert "stratified" in r10.method
