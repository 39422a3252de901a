"""CIRR (Liu et al., ICCV 2021): the released rc2 annotations, scored as SEARLE's validate.py scores them.

Official protocol: the gallery is every image of the split; the reference is removed from the ranking
before R@1/5/10/50; Recall_subset@1/2/3 ranks only the query's `img_set.members` minus the reference; the
target is `target_hard` alone. test1 has no targets: `cirbench eval --split test1` writes the two files
the test server accepts (see `write_submission`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirbench.core.io import atomic_write
from cirbench.core.options import as_bool
from cirbench.core.paths import Root
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.tasks._files import (
    DirIndex,
    JsonFile,
    check_images,
    check_options,
    expect_dict,
    expect_list,
    get_field,
    group_by_dir,
    parse_variant,
    read_json,
    require_data_dir,
    revision,
    typed_list,
    variant_names,
)
from cirbench.tasks._server import IMAGE_EXTENSION, INT_KEY, Problems, few
from cirbench.tasks.registry import TaskSpec, register_task

NAME = "cirr"
VERSION = "rc2"
SPLITS = ("val", "test1", "train")
METRICS = ("R@1", "R@5", "R@10", "R@50", "R_s@1", "R_s@2", "R_s@3", "Avg")
SERVER_TOPK = {"recall": 50, "recall_subset": 3}
SERVER_MAX_BYTES = 5_000_000
"""The server's limit is "5MB" per file; 5,000,000 bytes is the safe reading of it."""
TEST1_PAIRS = 4148
"""Pairs in cap.rc2.test1.json (benchmarks.md §1.3, counted from the released file)."""

AXES = (("reference-excluded", "reference-kept"),)
PROTOCOLS = variant_names(AXES)
SEARLE_TEMPLATE = "a photo of $ that {text}"
OPTIONS = {
    "check_images": "true (default) or false: fail fast when image files are missing",
    "image_root": "folder the ./train, ./dev, ./test1 paths of image_splits are relative to (default: "
                  "<data-dir>/img_raw or <data-dir>, whichever holds them)",
}

LAYOUT = """\
  CIRR rc2, in either of the two layouts in common use:
  (a) CIRR README:  <data-dir>/captions/cap.rc2.{train,val,test1}.json
                    <data-dir>/image_splits/split.rc2.{train,val,test1}.json
                    <data-dir>/img_raw/{train/<0..99>/,dev/,test1/}<name>.png
  (b) SEARLE:       <data-dir>/cirr/captions/cap.rc2.<split>.json
                    <data-dir>/cirr/image_splits/split.rc2.<split>.json
                    <data-dir>/{train/<0..99>/,dev/,test1/}<name>.png
  Annotations: git clone -b cirr_dataset https://github.com/Cuberick-Orion/CIRR; images: NLVR2 (access form).
  --task-option image_root=DIR says where the ./dev/... paths of image_splits point."""

METADATA = TaskMetadata(
    instructions={"query": "Retrieve a day-to-day image that aligns with the modification instructions of "
                           "the provided image."},  # M-BEIR's CIRR instruction, reused by MTEB
    name=NAME,
    description="Composed Image Retrieval on Real-life images (NLVR2 photos); one target per query, "
                "plus a 6-image subset per query for Recall_subset.",
    source="https://github.com/Cuberick-Orion/CIRR (branch cirr_dataset, version rc2)",
    license="MIT (annotations); images: NLVR2 terms",
    citation="""@inproceedings{Liu:ICCV2021,
  author    = {Zheyuan Liu and Cristian Rodriguez and Damien Teney and Stephen Gould},
  title     = {Image Retrieval on Real-life Images with Pre-trained Vision-and-Language Models},
  booktitle = {ICCV},
  year      = {2021}
}""",
    pitfalls=(
        "The reference image is removed from the ranking before any metric (SEARLE, CIReVL, Pic2Word).",
        "Recall_subset ranks img_set.members minus the reference: 5 candidates, not 6.",
        "Metrics use target_hard only; target_soft is ignored (it can even list the reference).",
        "val has 4,181 pairs; the paper's 4,184 is a typo (CIRR README).",
        "Test submissions carry version rc2 and image names without extension, at most 5 MB per file.",
    ),
)


def _locate(data_dir: Path, split: str, image_root: str | None) -> tuple[str, Path, list[Path]]:
    """(layout name, annotation root, image-root candidates) for the layout found under data_dir."""
    for layout, ann in (("readme", data_dir), ("searle", data_dir / "cirr")):
        if (ann / "captions").is_dir() or (ann / "image_splits").is_dir():
            if image_root is not None:
                roots = [Path(image_root)]
            elif layout == "readme":
                roots = [ann / "img_raw", ann]
            else:  # SEARLE's layout; a README clone found one level down keeps its img_raw/
                roots = [data_dir, ann / "img_raw"]
            return layout, ann, roots
    raise DatasetError(f"no CIRR annotations (captions/ or cirr/captions/) under {data_dir}. "
                       f"Expected layout:\n{LAYOUT}", file=data_dir)


def _pick_root(roots: list[Path], rel_paths: list[str]) -> Path:
    """The first candidate that holds the split's top image folder (dev/, test1/ or train/)."""
    if rel_paths:
        top = os.path.normpath(rel_paths[0]).split(os.sep)[0]
        for r in roots:
            if (r / top).is_dir():
                return r
    return roots[0]


def load(data_dir: Path | None, split: str, protocol: str = "official", **options: Any) -> Task:
    """Read cap.rc2.<split>.json and split.rc2.<split>.json into a Task (image files are not opened)."""
    check_options(options, OPTIONS, NAME)
    if split not in SPLITS:
        raise ValueError(f"CIRR has no split {split!r}; splits: {list(SPLITS)}")
    (ref_choice,) = parse_variant(protocol, AXES)
    exclude_ref = ref_choice == "reference-excluded"
    check = as_bool(options.get("check_images", True), "check_images")
    root = require_data_dir(data_dir, NAME, LAYOUT)
    layout, ann, roots = _locate(root, split, options.get("image_root"))

    caps_f = read_json(ann / "captions" / f"cap.{VERSION}.{split}.json", LAYOUT)
    split_f = read_json(ann / "image_splits" / f"split.{VERSION}.{split}.json", LAYOUT)
    name_to_rel = expect_dict(split_f, "a JSON object mapping image name to relative path")
    for name, rel in name_to_rel.items():
        if not isinstance(rel, str):
            raise DatasetError("relative path must be a string", file=split_f.path, record=name)
    img_root = _pick_root(roots, list(name_to_rel.values()))
    base = os.fspath(img_root)
    guard = Root(img_root, what="the CIRR image root")  # no ../, absolute path or symlink out of it
    images = {name: guard.join(rel, file=split_f.path, record=name) for name, rel in name_to_rel.items()}
    if check:
        check_images(group_by_dir(map(os.fspath, images.values())), task=NAME, split=split, root=img_root,
                     layout=LAYOUT, index=DirIndex())
    corpus = [Item(id=name, image=image) for name, image in images.items()]
    queries = _queries(caps_f, split, images, exclude_ref)

    return Task(
        metadata=METADATA, split=split, queries=queries, corpus=corpus,
        protocol=_protocol(protocol, split, len(corpus), exclude_ref),
        revision=revision([caps_f, split_f]), has_labels=split != "test1",
        extra={"version": VERSION, "layout": layout, "annotations": os.fspath(ann), "image_root": base},
    )


def _queries(caps_f: JsonFile, split: str, paths: dict[str, Path], exclude_ref: bool) -> list[Query]:
    f = caps_f.path
    labelled = split != "test1"
    queries: list[Query] = []
    for i, rec in enumerate(expect_list(caps_f, "a JSON list of pair records")):
        pairid = get_field(rec, "pairid", int, file=f, record=i)
        ref = get_field(rec, "reference", str, file=f, record=pairid)
        caption = get_field(rec, "caption", str, file=f, record=pairid)
        img_set = get_field(rec, "img_set", dict, file=f, record=pairid)
        members = typed_list(img_set, "members", file=f, record=pairid, label="img_set.members")
        assert members is not None
        target = get_field(rec, "target_hard", str, file=f, record=pairid, optional=not labelled)
        for fname, name in [("reference", ref), ("target_hard", target)] + [
                ("img_set.members", m) for m in members]:
            if name is not None and name not in paths:
                raise DatasetError(f"image {name!r} is not in image_splits/split.{VERSION}.{split}.json",
                                   file=f, record=pairid, field=fname)
        candidates = tuple(m for m in members if m != ref) if exclude_ref else tuple(members)
        qid = str(pairid)
        queries.append(Query(
            id=qid, item=Item(id=qid, image=paths[ref], text=caption),
            relevant_ids=(target,) if target is not None else (), reference_id=ref,
            candidate_ids=candidates,
            meta={"pairid": pairid, "img_set_id": img_set.get("id"),
                  "target_soft": rec.get("target_soft", {})},
        ))
    return queries


def _protocol(name: str, split: str, n_images: int, exclude_ref: bool) -> Protocol:
    notes = {
        "source": "miccunifi/SEARLE src/validate.py::cirr_compute_val_metrics",
        "relevance": "target_hard only; target_soft is ignored",
        "reference": ("removed from the ranking before every metric (N-1 candidates)" if exclude_ref else
                      "kept in the ranking: NOT the official protocol, not comparable to published numbers"),
        "recall_subset": "ranking restricted to img_set.members" +
                         (" minus the reference (5 candidates)" if exclude_ref else " (6 candidates)"),
        "Avg": "(R@5 + R_s@1) / 2, the supervised papers' summary number",
        "pseudo_token_template": "SEARLE's zero-shot prompt; '$' marks the pseudo-token of textual-inversion "
                         "models. Models that embed the reference image themselves use the caption alone.",
        "test_server": "http://cirr.cecs.anu.edu.au/ (recall top-50 and recall_subset top-3 files, "
                       "version rc2, names without extension, <= 5 MB each)",
    }
    return Protocol(
        name=name, metrics=METRICS,
        main_metric="Avg", top_k=50, exclude_reference=exclude_ref,
        gallery=f"all {n_images} images of image_splits/split.{VERSION}.{split}.json",
        text_template="{text}", pseudo_token_template=SEARLE_TEMPLATE, caption_join=None, notes=notes,
    )


# ----------------------------------------------------------------------------------------------------
# Test server files
# ----------------------------------------------------------------------------------------------------


def _ranked(run: Any, row: int, *, subset: bool, drop: str | None) -> list[str]:
    """Ranked corpus ids of one run row: padding, the reference and repeats removed."""
    idx = run.subset_indices if subset else run.indices
    out: list[str] = []
    seen: set[str] = set()
    for i in idx[row]:
        if i < 0:
            continue
        cid = run.corpus_ids[int(i)]
        if cid != drop and cid not in seen:
            seen.add(cid)
            out.append(cid)
    return out


def submission_payloads(task: Task, run: Any) -> dict[str, dict[str, Any]]:
    """The two dicts the server accepts, keyed by metric ("recall", "recall_subset")."""
    row_of = {q: i for i, q in enumerate(run.query_ids)}
    missing = [q.id for q in task.queries if q.id not in row_of]
    if missing:
        raise ValueError(f"the run has no ranking for {len(missing)} queries (first: {missing[:5]})")
    out: dict[str, dict[str, Any]] = {m: {"version": VERSION, "metric": m} for m in SERVER_TOPK}
    for q in task.queries:
        row = row_of[q.id]
        full = _ranked(run, row, subset=False, drop=q.reference_id)
        if len(full) < SERVER_TOPK["recall"]:
            raise ValueError(f"query {q.id}: only {len(full)} ranked images after removing the reference; "
                             f"the server needs {SERVER_TOPK['recall']} (rank with the official protocol)")
        if run.subset_indices is not None:
            sub = _ranked(run, row, subset=True, drop=q.reference_id)
        else:
            members = set(q.candidate_ids or ())
            sub = [c for c in full if c in members]
        if len(sub) < SERVER_TOPK["recall_subset"]:
            raise ValueError(f"query {q.id}: only {len(sub)} ranked img_set members; the server needs "
                             f"{SERVER_TOPK['recall_subset']}")
        out["recall"][q.id] = full[:SERVER_TOPK["recall"]]
        out["recall_subset"][q.id] = sub[:SERVER_TOPK["recall_subset"]]
    return out


@dataclass
class CirrSplit:
    """What the id checks need from cap.rc2.test1.json and split.rc2.test1.json."""

    references: dict[str, str]
    members: dict[str, set[str]]
    images: set[str]


def _cirr_split(data_dir: Path) -> CirrSplit:
    task = load(data_dir, "test1", check_images="false")
    return CirrSplit(
        references={q.id: q.reference_id or "" for q in task.queries},
        members={q.id: set(q.candidate_ids or ()) - {q.reference_id} for q in task.queries},
        images={it.id for it in task.corpus},
    )


def check_cirr_payload(data: Any, *, n_bytes: int | None = None, split: CirrSplit | None = None) -> list[str]:
    """Problems of one parsed CIRR file (recall or recall_subset); empty when the server should accept it."""
    p = Problems()
    if n_bytes is not None and n_bytes > SERVER_MAX_BYTES:
        p.add(f"file is {n_bytes:,} bytes; the server accepts at most 5 MB ({SERVER_MAX_BYTES:,} bytes)")
    if not isinstance(data, dict):
        p.add(f"top level must be a JSON object, found {type(data).__name__}")
        return p.result()
    version = data.get("version")
    if version is None:
        p.add(f'missing "version" entry (must be "{VERSION}")')
    elif version != VERSION:
        p.add(f'"version" is {version!r}; must be "{VERSION}"')
    metric = data.get("metric")
    if metric is None:
        p.add('missing "metric" entry (must be "recall" or "recall_subset")')
    elif metric not in SERVER_TOPK:
        p.add(f'"metric" is {metric!r}; must be "recall" or "recall_subset"')
    k = SERVER_TOPK.get(metric) if isinstance(metric, str) else None
    keys = [key for key in data if key not in ("version", "metric")]
    for key in keys:
        if not INT_KEY.match(key):
            p.group("keys are not pair ids", repr(key))
            continue
        names = data[key]
        if not isinstance(names, list):
            p.group("values are not lists", key)
            continue
        if not all(isinstance(n, str) for n in names):
            p.group("lists hold non-string names", key)
            continue
        if k is not None and len(names) != k:
            p.group(f"lists do not hold exactly {k} names ({metric})", f"{key} ({len(names)})")
        if len(set(names)) != len(names):
            p.group("lists repeat a name", key)
        bad = [n for n in names if IMAGE_EXTENSION.search(n) or "/" in n or "\\" in n]
        if bad:
            p.group("lists hold file names or paths instead of image names without extension",
                    f"{key} ({bad[0]!r})")
        if split is None:
            if any(not n.startswith("test1-") for n in names):
                p.group("lists hold names that are not test1 images", key)
            continue
        unknown = [n for n in names if n not in split.images]
        if unknown:
            p.group("lists hold names that are not in split.rc2.test1.json", f"{key} ({unknown[0]!r})")
        if key in split.references and split.references[key] in names:
            p.group("lists contain the query's own reference (the server expects it removed)", key)
        if metric == "recall_subset" and key in split.members:
            outside = [n for n in names if n not in split.members[key]]
            if outside:
                p.group("recall_subset lists hold names outside img_set.members minus the reference",
                        f"{key} ({outside[0]!r})")
    valid_keys = {key for key in keys if INT_KEY.match(key)}
    if split is not None:
        missing = set(split.references) - valid_keys
        extra = valid_keys - set(split.references)
        if missing:
            p.add(f"{len(missing)} of {len(split.references)} test1 pair ids are missing: {few(missing)}")
        if extra:
            p.add(f"{len(extra)} pair ids are not in cap.rc2.test1.json: {few(extra)}")
    elif len(valid_keys) != TEST1_PAIRS:
        p.add(f"file has {len(valid_keys)} pair ids; CIRR rc2 test1 has {TEST1_PAIRS} "
              "(pass the data directory to list the missing ones)")
    return p.result()


def check_submission(data: Any, n_bytes: int, data_dir: Path | None) -> list[str]:
    """Problems of a parsed CIRR test1 file; with `data_dir`, ids are checked against the released split."""
    try:
        split = _cirr_split(data_dir) if data_dir is not None else None
    except DatasetError as e:
        return [f"ids not checked against the split: {e}"] + check_cirr_payload(data, n_bytes=n_bytes)
    return check_cirr_payload(data, n_bytes=n_bytes, split=split)


def write_submission(task: Task, run: Any, out_dir: Path) -> list[Path]:
    """Write cirr_test1_recall.json and cirr_test1_recall_subset.json for the CIRR test server."""
    if task.split != "test1":
        raise ValueError(f"CIRR test-server files are for split test1, not {task.split!r}")
    split = CirrSplit(references={q.id: q.reference_id or "" for q in task.queries},
                      members={q.id: set(q.candidate_ids or ()) - {q.reference_id} for q in task.queries},
                      images={it.id for it in task.corpus})
    written: list[Path] = []
    for metric, payload in submission_payloads(task, run).items():
        text = json.dumps(payload, separators=(",", ":"))
        problems = check_cirr_payload(payload, n_bytes=len(text.encode()), split=split)
        if problems:
            raise ValueError(f"the {metric} submission would be rejected: " + "; ".join(problems))
        path = Path(out_dir) / f"cirr_test1_{metric}.json"
        with atomic_write(path) as fh:
            fh.write(text)
        written.append(path)
    return written


SPEC = register_task(TaskSpec(
    metadata=METADATA, load=load, splits=SPLITS, default_split="val", protocols=PROTOCOLS, layout=LAYOUT,
    metrics=METRICS,
    size="val 4,181 queries / 2,297 images; test1 4,148 / 2,315 (server); train 28,225 / 16,939",
    submission=write_submission, check_submission=check_submission, options=OPTIONS,
))
