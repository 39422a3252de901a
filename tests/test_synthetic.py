"""The embedded synthetic benchmark: determinism, coverage of the taxonomy, loaders, and an independent
re-check of every target set from the stored scene graphs (this file does not import the builder's
predicate code: it re-implements what an edit means)."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cirbench.builders.synthetic import build_synthetic
from cirbench.core.dataset import load_native

ROOT = Path(__file__).resolve().parents[1]
SUBCATEGORIES = {
    "Color": "Attribute",
    "Material": "Attribute",
    "Shape": "Attribute",
    "Texture": "Attribute",
    "Addition": "Object",
    "Remove": "Object",
    "Replace": "Object",
    "Count": "Object",
    "Spatial": "Relationship",
    "Action": "Relationship",
    "Viewpoint": "Relationship",
    "Style": "Global Environment",
    "Time": "Global Environment",
    "Weather": "Global Environment",
    "Complex": "Complex",
}
GLOBALS = ("style", "time", "weather", "camera")
OBJ_ATTRS = ("shape", "color", "size", "texture", "material", "action")
SPLITS = ("test", "test_single", "train")
LIMIT = 30


def _config() -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "pipelines" / "synthetic.yaml").read_text())
    cfg["render"]["workers"] = 1  # keep the test light on a shared machine
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The same small build twice (seed 0), and a smaller one with seed 1."""
    base = tmp_path_factory.mktemp("synthetic")
    cfg = _config()
    a = build_synthetic(cfg, base / "a", preset="mini", seed=0, limit=LIMIT, progress=False)
    b = build_synthetic(cfg, base / "b", preset="mini", seed=0, limit=LIMIT, progress=False)
    c = build_synthetic(cfg, base / "c", preset="mini", seed=1, limit=15, progress=False)
    return a, b, c


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_another_seed_differs(built: tuple[Path, Path, Path]) -> None:
    a, b, c = built
    fa, fb, fc = _files(a), _files(b), _files(c)
    for must in (
        "cirbench.json",
        "README.md",
        "contact_sheet.png",
        "test/queries.parquet",
        "test/corpus.parquet",
        "test_single/queries.parquet",
        "train/queries.parquet",
        "train/corpus.parquet",
        "scenes/test.jsonl",
        "scenes/train.jsonl",
    ):
        assert must in fa
    assert fa == fb
    assert fa["test/queries.parquet"] != fc["test/queries.parquet"]
    assert json.loads(fa["cirbench.json"])["revision"] != json.loads(fc["cirbench.json"])["revision"]
    text = fa["cirbench.json"].decode() + fa["README.md"].decode()
    assert str(a) not in text and "/tmp" not in text


def test_taxonomy_protocol_and_loaders(built: tuple[Path, Path, Path]) -> None:
    root = built[0]
    manifest = json.loads((root / "cirbench.json").read_text())
    assert manifest["taxonomy"] == SUBCATEGORIES
    p = manifest["protocol"]
    assert p["metrics"] == ["R@1", "R@5", "R@10", "R@50", "mAP@5", "mAP@10", "mAP@50"]
    got = (p["main_metric"], p["top_k"], p["ap_normaliser"], p["exclude_reference"])
    assert got == ("R@1", 50, "min(K,|G|)", False)
    tasks = {s: load_native(root, s) for s in SPLITS}
    assert len(tasks["test"].queries) == LIMIT == len(tasks["test_single"].queries)
    assert [it.id for it in tasks["test"].corpus] == [it.id for it in tasks["test_single"].corpus]
    for s, task in tasks.items():
        subs = {q.subcategory for q in task.queries}
        assert subs == set(SUBCATEGORIES), s
        assert all(q.category == SUBCATEGORIES[q.subcategory or ""] for q in task.queries)
        assert all(it.caption and isinstance(it.image, bytes) for it in task.corpus)
        assert all(q.reference_id is not None and q.item.text for q in task.queries)
    img = tasks["test"].corpus[0].load_image()
    assert img.size == (128, 128)
    assert Image.open(io.BytesIO((root / "contact_sheet.png").read_bytes())).format == "PNG"
    card = (root / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] and front["pretty_name"] and front["size_categories"] and front["tags"]
    assert "image-to-image" in front["task_categories"]

    import datasets

    ds = datasets.load_dataset(
        "parquet",
        data_files={s: str(root / s / "queries.parquet") for s in SPLITS},
        cache_dir=str(root.parent / "hf-cache"),
    )
    assert ds["test"].num_rows == LIMIT and set(ds["train"]["subcategory"]) == set(SUBCATEGORIES)
    corpus = datasets.load_dataset(
        "parquet", data_files=str(root / "test" / "corpus.parquet"), cache_dir=str(root.parent / "hf-cache")
    )["train"]
    assert corpus.num_rows == len(tasks["test"].corpus)


# ------------------------------------------------------------------------------------------ independent check

Req = tuple[set[int], dict[str, set[str] | None]]
"""A required object: allowed slots, allowed values per attribute (None = anything)."""


def _assignable(reqs: Sequence[Req], objs: Sequence[Mapping[str, Any]]) -> bool:
    """Backtracking: can each requirement take a distinct object that meets it?"""
    if not reqs:
        return not objs
    (slots, attrs), rest = reqs[0], reqs[1:]
    for k, o in enumerate(objs):
        meets = o["slot"] in slots and all(v is None or o[a] in v for a, v in attrs.items())
        if meets and _assignable(rest, [*objs[:k], *objs[k + 1 :]]):
            return True
    return False


def edit_holds(ref: Mapping[str, Any], ops: Sequence[Mapping[str, Any]], cand: Mapping[str, Any]) -> bool:
    """Is `cand` the reference with these ops applied, everything unmentioned unchanged?"""
    for g in GLOBALS:
        allowed = {ref[g]}
        for op in ops:
            if op["op"] == "set" and "obj" not in op and op["attr"] == g:
                allowed = set(op["values"])
        if cand[g] not in allowed:
            return False
    reqs: dict[int, Req] = {o["slot"]: ({o["slot"]}, {a: {o[a]} for a in OBJ_ATTRS}) for o in ref["objects"]}
    new: list[Req] = []
    groups: list[tuple[set[int], int]] = []
    for op in ops:
        kind = op["op"]
        if kind == "set" and "obj" in op:
            reqs[op["obj"]][1][op["attr"]] = set(op["values"])
        elif kind == "replace":
            free = {a: set(op["new"][a]) if a in op["new"] else None for a in OBJ_ATTRS}
            reqs[op["obj"]] = ({op["obj"]}, free)
        elif kind == "move":
            reqs[op["obj"]] = (set(op["slots"]), reqs[op["obj"]][1])
        elif kind == "swap":
            x, y = op["objs"]
            reqs[x], reqs[y] = ({y}, reqs[x][1]), ({x}, reqs[y][1])
        elif kind == "add":
            for spec in op["objects"]:
                new.append(
                    (
                        set(spec.get("slots", range(5))),
                        {a: set(spec[a]) if a in spec else None for a in OBJ_ATTRS},
                    )
                )
        elif kind == "remove":
            groups.append((set(op["objs"]), op["count"]))
    removable = sorted(set().union(*(g for g, _ in groups))) if groups else []
    for r in range(len(removable) + 1):
        for gone in map(set, itertools.combinations(removable, r)):
            if any(len(gone & g) != n for g, n in groups):
                continue
            kept = [req for s, req in sorted(reqs.items()) if s not in gone]
            if len(kept) + len(new) == len(cand["objects"]) and _assignable(kept + new, cand["objects"]):
                return True
    return False


def _scenes(root: Path, split: str) -> dict[str, dict[str, Any]]:
    lines = (root / "scenes" / f"{split}.jsonl").read_text().splitlines()
    return {d["id"]: d for d in map(json.loads, lines)}


@pytest.mark.parametrize("split", SPLITS)
def test_every_target_set_rechecked_from_scene_graphs(built: tuple[Path, Path, Path], split: str) -> None:
    root = built[0]
    scenes = _scenes(root, split)
    corpus_ids = pq.read_table(root / split / "corpus.parquet", columns=["id"]).column("id").to_pylist()
    assert sorted(corpus_ids) == sorted(scenes)
    rows = pq.read_table(root / split / "queries.parquet").to_pylist()
    n_multi = 0
    for q in rows:
        meta = json.loads(q["meta"])
        assert meta["reference_scene"] == q["reference_id"]
        ref, ops = scenes[q["reference_id"]], meta["edit"]["ops"]
        assert meta["edit"]["subcategory"] == q["subcategory"]
        assert (len(ops) >= 2) == (q["subcategory"] == "Complex")
        sat = {gid for gid, sc in scenes.items() if edit_holds(ref, ops, sc)}
        assert sat == set(q["relevant_ids"]), (q["id"], q["text"])
        assert q["reference_id"] not in sat
        assert q["hard_negative_ids"][0] == q["reference_id"]
        assert not sat & set(q["hard_negative_ids"]), q["text"]
        n_multi += len(sat) > 1
        if split == "test_single":
            assert len(sat) == 1
            parent = meta["parent"]
            assert q["text"].startswith(meta["base_text"]) and parent + "-single" == q["id"]
    if split != "test_single":
        assert n_multi > 0  # underspecified texts do produce several targets


def test_single_variants_refine_their_parents(built: tuple[Path, Path, Path]) -> None:
    root = built[0]
    multi = {q["id"]: q for q in pq.read_table(root / "test" / "queries.parquet").to_pylist()}
    for q in pq.read_table(root / "test_single" / "queries.parquet").to_pylist():
        parent = multi[json.loads(q["meta"])["parent"]]
        assert set(q["relevant_ids"]) <= set(parent["relevant_ids"])
        assert (q["text"] == parent["text"]) == (len(parent["relevant_ids"]) == 1)


def test_presets_and_checker_self_test() -> None:
    from cirbench.builders.synthetic.build import resolve

    cfg = _config()
    _, seed, mini = resolve(cfg, "mini", None, None)
    _, _, full = resolve(cfg, "full", 7, None)
    assert mini["test"].queries == 1000 and mini["train"].queries == 3000 and full["test"].queries == 10000
    assert resolve(cfg, None, None, 30)[2]["train"].queries == 90
    with pytest.raises(ValueError):
        resolve(cfg, "nope", None, None)
    # the independent checker itself, on hand-written cases
    o = {
        "slot": 1,
        "shape": "circle",
        "color": "red",
        "size": "small",
        "texture": "plain",
        "material": "matte",
        "action": "still",
    }
    ref = {"style": "photo", "time": "day", "weather": "clear", "camera": "front", "objects": [o]}
    blue = {**ref, "objects": [{**o, "color": "blue"}]}
    moved = {**ref, "objects": [{**o, "slot": 0}]}
    assert edit_holds(ref, [{"op": "set", "attr": "color", "obj": 1, "values": ["blue", "green"]}], blue)
    assert not edit_holds(ref, [{"op": "set", "attr": "color", "obj": 1, "values": ["green"]}], blue)
    assert edit_holds(ref, [{"op": "move", "obj": 1, "slots": [0]}], moved)
    assert not edit_holds(ref, [{"op": "move", "obj": 1, "slots": [0]}], ref)
    star = {**o, "slot": 3, "shape": "star", "color": "green"}
    added = {**ref, "objects": [o, star]}
    assert edit_holds(ref, [{"op": "add", "objects": [{"shape": ["star"], "slots": [3, 4]}]}], added)
    assert not edit_holds(ref, [{"op": "add", "objects": [{"shape": ["star"], "slots": [0]}]}], added)
    assert edit_holds(added, [{"op": "remove", "objs": [1, 3], "count": 1}], ref)
    assert not edit_holds(added, [{"op": "remove", "objs": [1, 3], "count": 2}], ref)
