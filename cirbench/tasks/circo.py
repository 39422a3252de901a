"""CIRCO (Baldrati et al., ICCV 2023): several ground truths per query over the COCO 2017 unlabeled set.

Official protocol (miccunifi/CIRCO src/evaluation.py, the server's code): mAP@5/10/25/50 over all
`gt_img_ids`, AP@K divided by min(K, |G|), on the top 50; Recall@K on `target_img_id` alone; mAP@10 per
semantic aspect; the reference stays in the gallery. The gallery (~123k images) is listed from
image_info_unlabeled2017.json; image files are checked by one directory scan and never opened here.
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
from cirbench.core.protocol import DEFAULT_BREAKDOWNS
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
from cirbench.tasks._server import INT_KEY, Problems, few
from cirbench.tasks.registry import TaskSpec, register_task

NAME = "circo"
SPLITS = ("val", "test")
METRICS = ("mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@5", "R@10", "R@25", "R@50")
SERVER_TOPK = 50
TEST_QUERIES = 800
SEMANTIC_ASPECTS = ("cardinality", "addition", "negation", "direct_addressing", "compare_change",
                    "comparative_statement", "statement_with_conjunction", "spatial_relations_background",
                    "viewpoint")
"""The nine aspects the server reports mAP@10 for (CIRCO src/evaluation.py)."""

AXES = (("relative-caption", "shared-concept"), ("reference-kept", "reference-excluded"))
PROTOCOLS = variant_names(AXES)
SEARLE_TEMPLATE = "a photo of $ that {text}"
MAGICLENS_JOIN = "find {shared_concept} but {relative_caption}"
OPTIONS = {
    "check_images": "true (default) or false: fail fast when image files are missing",
    "coco_dir": "the COCO2017_unlabeled folder (annotations/ + unlabeled2017/) when it is not in the "
                "data directory (default <data-dir>/COCO2017_unlabeled)",
}

LAYOUT = """\
  CIRCO (the miccunifi/CIRCO README layout):
    <data-dir>/annotations/{val,test}.json
    <data-dir>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
    <data-dir>/COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg      (~123k images)
  Annotations: git clone https://github.com/miccunifi/CIRCO; images and image_info: cocodataset.org
  (2017 Unlabeled images + Image info). --task-option coco_dir=DIR points at a COCO2017_unlabeled kept
  elsewhere."""

METADATA = TaskMetadata(
    instructions={"query": "Retrieve an image that shows the provided image with the described changes."},
    name=NAME,
    description="Composed Image Retrieval on Common Objects in context: open-domain queries with "
                "multiple ground truths, searched over the COCO 2017 unlabeled set.",
    source="https://github.com/miccunifi/CIRCO",
    license="CC BY-NC 4.0 (annotations); images: COCO terms",
    citation="""@inproceedings{baldrati2023zero,
  title     = {Zero-Shot Composed Image Retrieval with Textual Inversion},
  author    = {Baldrati, Alberto and Agnolucci, Lorenzo and Bertini, Marco and Del Bimbo, Alberto},
  booktitle = {ICCV},
  year      = {2023}
}""",
    pitfalls=(
        "mAP@K divides by min(K, |G|) (not |G| as trec_eval does) and is computed on a top-50 list.",
        "Recall@K uses target_img_id only, not every ground truth.",
        "The reference stays in the gallery (SEARLE, CIReVL, server); CoVR removes it. It is never a GT.",
        "Whether the query text includes shared_concept differs between codebases (MagicLens does).",
        "Test submissions: all 800 query ids, top-50 integer ids, no duplicates.",
    ),
)


def _paths(data_dir: Path, coco_dir: str | None) -> tuple[Path, Path]:
    coco = Path(coco_dir) if coco_dir is not None else data_dir / "COCO2017_unlabeled"
    return coco / "annotations" / "image_info_unlabeled2017.json", coco / "unlabeled2017"


def load(data_dir: Path | None, split: str, protocol: str = "official", **options: Any) -> Task:
    """Read annotations/<split>.json and the COCO unlabeled image list into a Task."""
    check_options(options, OPTIONS, NAME)
    if split not in SPLITS:
        raise ValueError(f"CIRCO has no split {split!r}; splits: {list(SPLITS)}")
    text_choice, ref_choice = parse_variant(protocol, AXES)
    check = as_bool(options.get("check_images", True), "check_images")
    root = require_data_dir(data_dir, NAME, LAYOUT)
    info_path, image_dir = _paths(root, options.get("coco_dir"))

    ann_f = read_json(root / "annotations" / f"{split}.json", LAYOUT)
    info_f = read_json(info_path, LAYOUT)
    id_to_file = _gallery(info_f)
    base = os.fspath(image_dir)
    guard = Root(image_dir, what="the COCO unlabeled2017 folder")  # file names may not leave it
    paths = {i: guard.join(fn, file=info_f.path, record=int(i), field="file_name")
             for i, fn in id_to_file.items()}
    if check:
        check_images(group_by_dir(map(os.fspath, paths.values())), task=NAME, split=split, root=image_dir,
                     layout=LAYOUT, index=DirIndex())
    corpus = [Item(id=i, image=p) for i, p in paths.items()]
    queries = _queries(ann_f, split, paths, shared=text_choice == "shared-concept")
    return Task(
        metadata=METADATA, split=split, queries=queries, corpus=corpus,
        protocol=_protocol(protocol, len(corpus), shared=text_choice == "shared-concept",
                           exclude_ref=ref_choice == "reference-excluded"),
        revision=revision([ann_f, info_f]), has_labels=split == "val", run_columns=run_columns,
        extra={"image_dir": base, "image_info": os.fspath(info_path)},
    )


def _gallery(info_f: JsonFile) -> dict[str, str]:
    """COCO image id (as a string) -> file name, in the order of `images` (SEARLE's index order)."""
    info = expect_dict(info_f, "a COCO image-info object with an 'images' list")
    images = get_field(info, "images", list, file=info_f.path, record="(top level)")
    try:  # fast path for a well-formed file: 123k records, no per-field checks
        pairs = [(img["id"], img["file_name"]) for img in images]
        if all(type(i) is int and type(f) is str for i, f in pairs):
            out = {str(i): f for i, f in pairs}
            if len(out) == len(pairs) and out:
                return out
    except (KeyError, TypeError):
        pass
    out = {}
    for n, img in enumerate(images):
        image_id = get_field(img, "id", int, file=info_f.path, record=f"images[{n}]")
        file_name = get_field(img, "file_name", str, file=info_f.path, record=image_id)
        key = str(image_id)
        if key in out:
            raise DatasetError("duplicate image id", file=info_f.path, record=image_id, field="id")
        out[key] = file_name
    if not out:
        raise DatasetError("the image list is empty", file=info_f.path, field="images")
    return out


def _queries(ann_f: JsonFile, split: str, id_to_file: dict[str, Path], *, shared: bool) -> list[Query]:
    f = ann_f.path
    labelled = split == "val"
    queries: list[Query] = []
    for n, rec in enumerate(expect_list(ann_f, "a JSON list of query records")):
        qnum = get_field(rec, "id", int, file=f, record=n)
        ref = str(get_field(rec, "reference_img_id", int, file=f, record=qnum))
        caption = get_field(rec, "relative_caption", str, file=f, record=qnum)
        concept = get_field(rec, "shared_concept", str, file=f, record=qnum, optional=not shared)
        gts: list[int] = typed_list(rec, "gt_img_ids", file=f, record=qnum, item_types=(int,),
                                    optional=not labelled) or []
        target = get_field(rec, "target_img_id", int, file=f, record=qnum, optional=not labelled)
        aspects = typed_list(rec, "semantic_aspects", file=f, record=qnum, optional=True) or []
        if labelled and not gts:
            raise DatasetError("a val query has no ground truth", file=f, record=qnum, field="gt_img_ids")
        if labelled and target not in gts:
            raise DatasetError(f"target_img_id {target} is not among gt_img_ids", file=f, record=qnum,
                               field="target_img_id")
        for fname, image_id in [("reference_img_id", ref)] + [("gt_img_ids", str(g)) for g in gts]:
            if image_id not in id_to_file:
                raise DatasetError(f"image id {image_id} is not in image_info_unlabeled2017.json", file=f,
                                   record=qnum, field=fname)
        text = MAGICLENS_JOIN.format(shared_concept=concept, relative_caption=caption) if shared else caption
        qid = str(qnum)
        meta: dict[str, Any] = {"relative_caption": caption, "shared_concept": concept,
                                "semantic_aspects": list(aspects)}
        if target is not None:
            meta["target_id"] = str(target)
        queries.append(Query(
            id=qid, item=Item(id=qid, image=id_to_file[ref], text=text),
            relevant_ids=tuple(dict.fromkeys(str(g) for g in gts)), reference_id=ref, meta=meta,
        ))
    return queries


def _protocol(name: str, n_images: int, *, shared: bool, exclude_ref: bool) -> Protocol:
    notes = {
        "source": "miccunifi/CIRCO src/evaluation.py::compute_metrics (the server's code)",
        "map": "over all gt_img_ids; AP@K = sum of P@k at GT ranks k <= K, divided by min(K, |G|); top 50",
        "recall": "R@K uses meta['target_id'] (target_img_id) only, not every ground truth (recall_on)",
        "per_aspect": "mAP@10 per entry of meta['semantic_aspects'] (server, since May 2024); a query "
                      "counts once in each of its aspects",
        "reference": ("removed from the ranking (CoVR's convention; the reference is never a GT, so scores "
                      "can only rise): not the server's protocol" if exclude_ref else
                      "kept in the gallery, as SEARLE, CIReVL and the server do"),
        "text": (f"'{MAGICLENS_JOIN}' (MagicLens data_utils.py::build_circo_dataset)" if shared else
                 "relative_caption alone (SEARLE, CIReVL); shared_concept is in meta"),
        "pseudo_token_template": ("none: MagicLens encodes the joined text as is" if shared else
                          "SEARLE's zero-shot prompt; '$' marks the pseudo-token of textual-inversion "
                          "models. Models that embed the reference image themselves use the text alone."),
        "test_server": "https://circo.micc.unifi.it/ (JSON {query id: top-50 COCO ids as ints}, all 800 "
                       "queries, no duplicates)",
    }
    return Protocol(
        name=name, metrics=METRICS,
        main_metric="mAP@5", top_k=50, ap_normaliser="min(K,|G|)", exclude_reference=exclude_ref,
        gallery=f"all {n_images} images of COCO 2017 unlabeled (image_info_unlabeled2017.json)",
        text_template="{text}", pseudo_token_template=None if shared else SEARLE_TEMPLATE,
        caption_join="shared-concept" if shared else None, recall_on="target_id",
        breakdowns={**DEFAULT_BREAKDOWNS, "aspect": "aspects"}, notes=notes,
    )


def run_columns(task: Task, indices: Any) -> dict[str, list[Any]]:
    """CIRCO's run columns: the annotated target (what R@K counts; labelled splits only) and each query's
    semantic aspects (the server's per-aspect mAP)."""
    cols: dict[str, list[Any]] = {}
    if any("target_id" in q.meta for q in task.queries):
        cols["target_id"] = [q.meta.get("target_id") for q in task.queries]
    cols["aspects"] = [list(q.meta.get("semantic_aspects") or []) for q in task.queries]
    return cols


# ----------------------------------------------------------------------------------------------------
# Test server file
# ----------------------------------------------------------------------------------------------------


def submission_payload(task: Task, run: Any) -> dict[str, list[int]]:
    """{query id: top-50 COCO ids as ints}, in query order, repeats and padding dropped."""
    row_of = {q: i for i, q in enumerate(run.query_ids)}
    missing = [q.id for q in task.queries if q.id not in row_of]
    if missing:
        raise ValueError(f"the run has no ranking for {len(missing)} queries (first: {missing[:5]})")
    out: dict[str, list[int]] = {}
    for q in task.queries:
        ids: list[int] = []
        for i in run.indices[row_of[q.id]]:
            if i >= 0:
                image_id = int(run.corpus_ids[int(i)])
                if image_id not in ids:
                    ids.append(image_id)
        if len(ids) < SERVER_TOPK:
            raise ValueError(f"query {q.id}: only {len(ids)} ranked images; the server needs {SERVER_TOPK}")
        out[q.id] = ids[:SERVER_TOPK]
    return out


@dataclass
class CircoSplit:
    query_ids: set[str]
    gallery: set[int] | None


def _circo_split(data_dir: Path, *, with_gallery: bool = True) -> CircoSplit:
    task = load(data_dir, "test", check_images="false")
    return CircoSplit(query_ids={q.id for q in task.queries},
                      gallery={int(it.id) for it in task.corpus} if with_gallery else None)


def check_circo_payload(data: Any, *, split: CircoSplit | None = None) -> list[str]:
    """Problems of a parsed CIRCO test file; empty when the server should accept it."""
    p = Problems()
    if not isinstance(data, dict):
        p.add(f"top level must be a JSON object, found {type(data).__name__}")
        return p.result()
    k = SERVER_TOPK
    valid_keys: set[str] = set()
    for key, ids in data.items():
        if not INT_KEY.match(key):
            p.group("keys are not query ids (decimal integers)", repr(key))
            continue
        valid_keys.add(key)
        if not isinstance(ids, list):
            p.group("values are not lists", key)
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            p.group("lists hold non-integer image ids (ids must be JSON integers)", key)
            continue
        if len(ids) != k:
            p.group(f"lists do not hold exactly {k} image ids", f"{key} ({len(ids)})")
        if len(set(ids)) != len(ids):
            p.group("lists repeat an image id", key)
        if split is not None and split.gallery is not None:
            unknown = [i for i in ids if i not in split.gallery]
            if unknown:
                p.group("lists hold ids that are not COCO 2017 unlabeled images", f"{key} ({unknown[0]})")
    expected = split.query_ids if split is not None else {str(i) for i in range(TEST_QUERIES)}
    missing, extra = expected - valid_keys, valid_keys - expected
    if missing:
        p.add(f"{len(missing)} of {len(expected)} test query ids are missing: {few(missing)}")
    if extra:
        p.add(f"{len(extra)} keys are not test query ids: {few(extra)}")
    return p.result()


def check_submission(data: Any, n_bytes: int, data_dir: Path | None) -> list[str]:
    """Problems of a parsed CIRCO test file; with `data_dir`, ids are checked against the released split."""
    try:
        split = _circo_split(data_dir) if data_dir is not None else None
    except DatasetError as e:
        return [f"ids not checked against the split: {e}"] + check_circo_payload(data)
    return check_circo_payload(data, split=split)


def write_submission(task: Task, run: Any, out_dir: Path) -> list[Path]:
    """Write circo_test.json for the CIRCO evaluation server."""
    if task.split != "test":
        raise ValueError(f"CIRCO test-server files are for split test, not {task.split!r}")
    payload = submission_payload(task, run)
    problems = check_circo_payload(payload, split=CircoSplit({q.id for q in task.queries}, None))
    if problems:
        raise ValueError("the submission would be rejected: " + "; ".join(problems))
    path = Path(out_dir) / "circo_test.json"
    with atomic_write(path) as fh:
        json.dump(payload, fh, separators=(",", ":"))
    return [path]


SPEC = register_task(TaskSpec(
    metadata=METADATA, load=load, splits=SPLITS, default_split="val", protocols=PROTOCOLS, layout=LAYOUT,
    metrics=METRICS,
    size="val 220 / test 800 queries (server); gallery ~123k COCO 2017 unlabeled images",
    submission=write_submission, check_submission=check_submission, options=OPTIONS,
))
