"""SoFT refinement: candidate mining, LMM confidence scoring with a threshold, single-target rewrite, export
of both variants; against an LMM over HTTP on 127.0.0.1 and offline with the template stand-ins."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cirbench.builders.soft_refine import merge_soft_shards, run_soft_refine
from cirbench.builders.soft_refine.mining import topk
from cirbench.core.dataset import (
    ImageRecord,
    QueryRecord,
    SplitData,
    load_native,
    read_manifest,
    write_dataset,
)
from cirbench.core.types import Protocol
from tests.helpers.edit_pipelines import FakeChatServer, canned_answer, request_images, request_text

N_IMAGES = 12


def _png(k: int) -> bytes:
    rng = np.random.default_rng(k)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source(tmp_path_factory.mktemp("src"))


def write_source(root: Path) -> Path:
    """A CIRR-like native dataset: 12 captioned images, 4 single-target queries."""
    corpus = [
        ImageRecord(id=f"im{k:02d}", image=_png(k), caption=f"a picture number {k}") for k in range(N_IMAGES)
    ]
    queries = [
        QueryRecord(
            id=f"q{k}",
            reference_id=f"im{k:02d}",
            text=f"make it like number {k + 4}",
            relevant_ids=[f"im{k + 4:02d}"],
            category="Object",
            subcategory="Replace",
        )
        for k in range(4)
    ]
    return write_dataset(
        root / "cirr-like",
        {"val": SplitData(queries, corpus)},
        name="cirr-like",
        protocol=Protocol(exclude_reference=True),
        taxonomy={"Replace": "Object"},
    )


def config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "pipeline": "soft-refine",
        "mining": {"model": "random", "top_k": 6},
        "scoring": {"top_n": 4},
    }
    cfg.update(over)
    return cfg


def shipped(name: str, server_url: str) -> dict[str, Any]:
    """A shipped pipelines/*.yaml with a local LMM server, the random encoder and small lists."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / name).read_text())
    cfg["lmm"]["cache"] = False
    cfg["lmm"]["openai"].update(model="fake-vlm", base_url=server_url, backoff_s=0.01, concurrency=3)
    cfg["mining"].update(model="random", top_k=6)
    cfg["scoring"]["top_n"] = 4
    return cfg


GOOD = {"im03", "im05", "im06", "im07", "im09"}
"""Candidates the fake LMM is confident about (0.9); every other candidate gets 0.4."""


def soft_responder(body: dict[str, Any]) -> str:
    text = request_text(body)
    if "confidence_scores" in text:
        names = re.findall(r"^candidate \d+: (\S+)$", text, flags=re.M)
        if "number 5" in text and names and names[0] == "im05":  # q1's target_image list
            return "I would pick the third one."  # malformed: rejected, logged, the other lists still count
        return json.dumps(
            {"confidence_scores": {n: 0.9 if n in GOOD else 0.4 for n in names} | {"bogus": 1.0}}
        )
    return canned_answer(body)


def test_refine_with_an_lmm_over_http(source: Path, tmp_path: Path) -> None:
    with FakeChatServer(soft_responder) as server:
        cfg = shipped("soft-refine-cirr.yaml", server.url)
        out = run_soft_refine(cfg, tmp_path / "soft", sources=f"dataset:{source}@val", progress=False)
        bodies = list(server.requests)
    units = {
        json.loads(p.read_text())["query"]: json.loads(p.read_text())
        for p in (tmp_path / "soft.work").glob("units/*/*.json")
    }
    multi, single = load_native(out, "test"), load_native(out, "test_single")
    assert {q.id for q in multi.queries} | {u for u, r in units.items() if not r["multi"]} == set(units)
    for q in multi.queries:
        rec = units[q.id]
        heads = {c for name in rec["scores"] for c, _ in rec["candidates"][name][:4]}
        assert set(rec["candidates"]) == {"caption", "joined", "target_image"}
        assert all(
            len(lst) == 6 and q.reference_id not in [c for c, _ in lst] for lst in rec["candidates"].values()
        )
        assert rec["candidates"]["target_image"][0][0] == rec["original_targets"][0]  # its own nearest image
        # targets: every top-4 candidate of any list scored >= 0.85, best first (ties by id)
        assert set(q.relevant_ids) == heads & GOOD and list(q.relevant_ids) == sorted(q.relevant_ids)
        assert q.meta["confidence_scores"] == {c: 0.9 for c in q.relevant_ids}
        assert q.meta["original_targets"] == list(rec["original_targets"]) and str(q.item.text).startswith(
            "make it"
        )
    for s in single.queries:
        parent = next(q for q in multi.queries if q.id == s.meta["parent"])
        assert len(s.relevant_ids) == 1 and s.relevant_ids[0] in parent.relevant_ids
        assert set(s.hard_negative_ids) == set(parent.relevant_ids) - set(s.relevant_ids)
        if s.hard_negative_ids:
            assert (
                s.meta["rewritten"]
                and s.item.text == "the same change, and the one with the brightest colours"
            )
        else:
            assert not s.meta["rewritten"] and s.item.text == parent.item.text
    # the malformed scoring answer is logged with its reason; the query kept its other lists
    rej = [json.loads(x) for x in (out / "rejections.jsonl").read_text().splitlines()]
    bad = [r for r in rej if r["stage"] == "score" and r["reason"].startswith("malformed answer")]
    assert bad and {(r["query"], r["raw"]) for r in bad} == {("q1", "I would pick the third one.")}
    assert "target_image" in {r["list"] for r in bad} and "caption" in units["q1"]["scores"]
    # on the wire: the reference, then each candidate after its name line; the single rewrite: 2 + comparisons
    score = [b for b in bodies if "confidence_scores" in request_text(b)]
    assert score and all(request_images(b) == 5 for b in score)
    singles = [b for b in bodies if "refined_caption" in request_text(b)]
    assert all(request_images(b) >= 3 for b in singles)
    m = read_manifest(out)
    assert m["protocol"]["ap_normaliser"] == "hits" and "mAP@25" in m["protocol"]["metrics"]
    assert m["generator"]["config"]["scoring"]["threshold"] == 0.85
    assert m["generator"]["source_task"] == "cirr-like" and set(m["generator"]["prompts"]) == {
        "describe",
        "score",
        "single",
    }
    card = (out / "README.md").read_text()
    assert "| test |" in card and "| test\\_single |" in card and "confidence >=" in card


def test_refine_offline_with_template_stand_ins(source: Path, tmp_path: Path) -> None:
    out = run_soft_refine(config(), tmp_path / "soft", sources=str(source) + "@val", progress=False)
    multi, single = load_native(out, "test"), load_native(out, "test_single")
    assert len(multi.queries) == 4  # the top candidate of each list scores 1.0 under min-max normalisation
    for s in single.queries:
        if s.meta["rewritten"]:
            assert "; the result shows a picture number" in str(s.item.text)


def test_shards_merge_to_the_single_run(source: Path, tmp_path: Path) -> None:
    spec = f"dataset:{source}@val"
    one = run_soft_refine(config(), tmp_path / "one", sources=spec, progress=False)
    for i in range(2):
        run_soft_refine(config(), tmp_path / "two", sources=spec, shard=(i, 2), progress=False)
    two = merge_soft_shards(tmp_path / "two", 2)
    for rel in (
        "cirbench.json",
        "README.md",
        "test/queries.parquet",
        "test_single/queries.parquet",
        "test/corpus.parquet",
    ):
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def _fashioniq(root: Path) -> Path:
    """A two-category FashionIQ layout: captions, image splits, images."""
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    for c, cat in enumerate(("dress", "shirt")):
        ids = [f"{cat}{k}" for k in range(6)]
        for k, i in enumerate(ids):
            (root / "images" / f"{i}.png").write_bytes(_png(100 * c + k))
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))
        caps = [
            {"candidate": ids[k], "target": ids[k + 2], "captions": [f"is darker {k}", f"has sleeves {k}"]}
            for k in range(2)
        ]
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(caps))
    return root


def test_fashioniq_categories_become_split_pairs(tmp_path: Path) -> None:
    data = _fashioniq(tmp_path / "fiq")
    with FakeChatServer() as server:
        cfg = shipped("soft-refine-fashioniq.yaml", server.url)
        cfg["sources"].update(data_dir=str(data), options={"categories": "dress,shirt"})
        out = run_soft_refine(cfg, tmp_path / "fiq-soft", sources="task:fashioniq@val", progress=False)
        describe = [request_text(b) for b in server.requests if "two-sentence description" in request_text(b)]
    assert sorted(read_manifest(out)["splits"]) == ["dress", "dress_single", "shirt", "shirt_single"]
    dress = load_native(out, "dress")
    assert {c.id for c in dress.corpus} == {f"dress{k}" for k in range(6)}
    assert all(q.meta["captions"][0].startswith("is darker") for q in dress.queries)
    assert describe and all(
        "has sleeves" in t and "shopper" in t for t in describe
    )  # both captions, FIQ prompt


def test_topk_is_deterministic_with_ties() -> None:
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert topk(s, 3).tolist() == [1, 3, 0] and topk(s, 4).tolist() == [1, 3, 0, 2] and topk(s, 10).size == 6


def test_config_is_checked() -> None:
    from cirbench.builders.soft_refine.config import resolve

    with pytest.raises(ValueError, match="unknown"):
        resolve(config(mining={"query_types": ["caption", "by_tg_img"]}))
    with pytest.raises(ValueError, match="threshold must be in"):
        resolve(config(scoring={"threshold": 85}))
    assert resolve(config())["scoring"]["threshold"] == 0.85
