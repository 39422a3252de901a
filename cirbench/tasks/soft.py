"""SoFT's refined CIRR-val and FashionIQ-val benchmarks: multi-target and single-target variants.

jjungyujin/SoFT (`mt_pipeline/`, `MultiTarget_README.md`) re-annotated the val splits: GPT-4o scored mined
candidates and kept those with confidence >= 0.85 as extra ground truths (multi-target), then rewrote one
caption per query for a single target with the other GTs as comparison images (single-target). The images
and galleries are those of the base benchmarks, read with cirbench's CIRR and FashionIQ loaders: the CIRR val
split, or each FashionIQ category's val split.

Multi-target: mAP@5/10/25/50 under SoFT's hit-normalised AP (protocol `hits`, `compute_map_at_k`) or CIRCO's
min(K, |G|) (protocol `circo`); single-target: R@1/5/10/50. SoFT keeps the reference in the gallery, and
some multi-target queries list their own reference as a target (benchmarks.md §8 item 9).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cirbench.core.options import as_bool
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.tasks._fashioniq_text import CATEGORIES, JOIN_NOTES, JOINS, join_captions
from cirbench.tasks._files import (
    JsonFile,
    check_options,
    expect_list,
    get_field,
    read_json,
    require_data_dir,
    revision,
    typed_list,
)
from cirbench.tasks.registry import TaskSpec, get_task_spec, register_task

FAMILY = "soft"
SPLITS = ("val",)
MULTI_PROTOCOLS = ("hits", "circo")
SINGLE_PROTOCOLS = ("official",)
NORMALISERS = {"hits": "hits", "circo": "min(K,|G|)"}
MULTI_METRICS = ("mAP@5", "mAP@10", "mAP@25", "mAP@50")
SINGLE_METRICS = ("R@1", "R@5", "R@10", "R@50")
SELECTION_DIRS = ("", "mt_pipeline/llm")
OPTIONS = {
    "check_images": "true (default) or false: fail fast when image files are missing",
    "base_dir": "the base benchmark's data directory (CIRR or FashionIQ layout; default <data-dir>/cirr or "
                "<data-dir>/fashioniq, else $CIRBENCH_DATA/cirr or $CIRBENCH_DATA/fashioniq)",
}
FIQ_OPTIONS = {
    **OPTIONS,
    "categories": "comma-separated subset of dress,shirt,toptee (default all three)",
    "caption_join": "multi-target captions: both-orders (default, cirbench's FashionIQ default), c1-and-c2 "
                    "(CIReVL, SoFT's baseline) or c2-and-c1",
}

LAYOUT = """\
  SoFT selection files (git clone https://github.com/jjungyujin/SoFT; either the repo root or a folder):
    <data-dir>[/mt_pipeline/llm]/multi_target_selection/{cirr,dress,shirt,toptee}_multi_target_selection.json
    <data-dir>[/mt_pipeline/llm]/single_target_selection/{cat}_selection_single_target_final.json
        (or the ..._seed42.json name the repo's loader expects)
  plus the base benchmark (images and image splits), found at --task-option base_dir=DIR, <data-dir>/cirr or
  <data-dir>/fashioniq, else $CIRBENCH_DATA/cirr or $CIRBENCH_DATA/fashioniq."""

CITATION = """@misc{jung2025soft,
  title  = {Soft Filtering: Guiding Zero-shot CIR with Prescriptive and Proscriptive Constraints},
  author = {Jung and Cho and Min and Choi},
  year   = {2025},
  note   = {arXiv:2512.20781; AAAI 2026 Workshop}
}"""

PITFALLS = (
    "SoFT's mAP divides by the number of hits in the top K (0 without a hit), not CIRCO's min(K, |G|): "
    "protocols `hits` and `circo` differ and are not comparable.",
    "The reference stays in the gallery; some multi-target queries list their reference among the targets.",
    "SoFT prints metrics rounded to 2 decimals.",
    "The formal names of the refined benchmarks in the paper were not verified.",
    "The repo's loader expects *_seed42.json single-target files; the repo ships *_final.json.",
)


def _metadata(base: str, target_type: str) -> TaskMetadata:
    title = "CIRR val" if base == "cirr" else "FashionIQ val"
    what = ("GPT-4o-selected extra ground truths (confidence >= 0.85)" if target_type == "multi" else
            "one target per query with a GPT-4o-refined caption; the other GTs are comparison images")
    return TaskMetadata(
        name=f"{FAMILY}-{base}-{target_type}",
        description=f"SoFT's {target_type}-target {title}: {what}.",
        source="https://github.com/jjungyujin/SoFT (mt_pipeline/, MultiTarget_README.md)",
        license="unknown: no licence recorded for the SoFT selection files; images under the base "
                "benchmark's terms",
        citation=CITATION, pitfalls=PITFALLS,
        taxonomy={c: c for c in CATEGORIES} if base == "fashioniq" else {},
    )


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def _selection_file(root: Path, target_type: str, cat: str) -> Path:
    names = ([f"multi_target_selection/{cat}_multi_target_selection.json"] if target_type == "multi" else
             [f"single_target_selection/{cat}_selection_single_target_final.json",
              f"single_target_selection/{cat}_selection_single_target_seed42.json"])
    for sub in SELECTION_DIRS:
        for name in names:
            p = root / sub / name
            if p.is_file():
                return p
    return root / names[0]


def _base_dir(root: Path, base: str, option: str | None) -> Path:
    if option is not None:
        return Path(option)
    local = root / base
    if local.is_dir():
        return local
    env = os.environ.get("CIRBENCH_DATA")
    if env and (Path(env) / base).is_dir():
        return Path(env) / base
    raise DatasetError(f"the {base} base dataset was not found: pass --task-option base_dir=DIR. Expected "
                       f"layout:\n{LAYOUT}", file=local)


def _captions(value: Any, join: str, f: Path, n: int, field: str) -> tuple[str, tuple[str, ...]]:
    """One caption, or FashionIQ's two joined by the protocol's rule."""
    if isinstance(value, str):
        return value, ()
    if isinstance(value, list) and len(value) == 2 and all(isinstance(c, str) for c in value):
        return join_captions(value[0], value[1], join)
    raise DatasetError(f"expected a caption or a list of 2 captions, found {value!r:.60}", file=f, record=n,
                       field=field)


def _in_gallery(name: str, gallery: set[str], f: Path, n: int, field: str, where: str) -> None:
    if name not in gallery:
        raise DatasetError(f"image {name!r} is not in {where}", file=f, record=n, field=field)


def _queries(sel: JsonFile, target_type: str, cat: str | None, gallery: set[str], where: str,
             paths: dict[str, Any], join: str) -> tuple[list[Query], int]:
    """Queries of one selection file, and how many listed targets score below the file's threshold."""
    f = sel.path
    out: list[Query] = []
    below = 0
    prefix = f"{cat}-" if cat is not None else ""
    for n, rec in enumerate(expect_list(sel, "a JSON list of query records")):
        ref = get_field(rec, "reference_image_name", str, file=f, record=n)
        _in_gallery(ref, gallery, f, n, "reference_image_name", where)
        meta: dict[str, Any] = {"reference": ref, "index": n}
        if target_type == "multi":
            scores = get_field(rec, "confidence_scores", dict, file=f, record=n)
            if not scores:
                raise DatasetError("confidence_scores is empty", file=f, record=n, field="confidence_scores")
            threshold = get_field(rec, "threshold", (int, float), file=f, record=n, optional=True)
            for t, s in scores.items():
                if isinstance(s, bool) or not isinstance(s, int | float):
                    raise DatasetError(f"score of {t!r} is not a number", file=f, record=n,
                                       field="confidence_scores")
                _in_gallery(t, gallery, f, n, "confidence_scores", where)
                if threshold is not None and s < threshold:
                    below += 1
            targets = tuple(scores)  # MultiTargetDataset: list(confidence_scores.keys())
            text, alts = _captions(rec.get("relative_captions"), join, f, n, "relative_captions")
            meta.update({"original_target": rec.get("target_image_name"), "threshold": threshold,
                         "confidence_scores": dict(scores)})
            negatives: tuple[str, ...] = ()
        else:
            target = get_field(rec, "target_image_name", str, file=f, record=n)
            _in_gallery(target, gallery, f, n, "target_image_name", where)
            targets = (target,)
            text, alts = _captions(rec.get("refined_caption"), join, f, n, "refined_caption")
            comparison = typed_list(rec, "comparison_images", file=f, record=n, optional=True) or []
            for c in comparison:
                _in_gallery(c, gallery, f, n, "comparison_images", where)
            negatives = tuple(c for c in dict.fromkeys(comparison) if c != target)
            meta.update({"original_target": rec.get("original_target"),
                         "original_captions": rec.get("original_captions"),
                         "target_confidence": rec.get("target_confidence")})
        qid = f"{prefix}{n}"
        image = paths[ref]
        out.append(Query(
            id=qid, item=Item(id=qid, image=image, text=text), relevant_ids=targets, reference_id=ref,
            category=cat, gallery=cat, hard_negative_ids=negatives,
            alt_items=tuple(Item(id=f"{qid}#{j}", image=image, text=t) for j, t in enumerate(alts, 1)),
            meta=meta,
        ))
    return out, below


# ----------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------


def _check_common(name: str, target_type: str, split: str, protocol: str, options: dict[str, Any],
                  known: dict[str, str]) -> None:
    check_options(options, known, name)
    if split not in SPLITS:
        raise ValueError(f"{name} has no split {split!r}; splits: {list(SPLITS)}")
    allowed = MULTI_PROTOCOLS if target_type == "multi" else SINGLE_PROTOCOLS
    if protocol not in allowed:
        raise ValueError(f"{name} has no protocol {protocol!r}; protocols: {list(allowed)}")


def _load_base(name: str, data_dir: Path, protocol: str, **options: Any) -> Task:
    """The base benchmark's val split, through its registered loader (a task module imports no other)."""
    return get_task_spec(name).load(data_dir, "val", protocol, **options)


def load_cirr(target_type: str, data_dir: Path | None, split: str, protocol: str, **options: Any) -> Task:
    """SoFT's CIRR-val variant: queries from the selection file, the gallery from CIRR's val split."""
    name = f"{FAMILY}-cirr-{target_type}"
    _check_common(name, target_type, split, protocol, options, OPTIONS)
    root = require_data_dir(data_dir, name, LAYOUT)
    check = as_bool(options.get("check_images", True), "check_images")
    base_dir = _base_dir(root, "cirr", options.get("base_dir"))
    base = _load_base("cirr", base_dir, "reference-kept", check_images=check)
    sel = read_json(_selection_file(root, target_type, "cirr"), LAYOUT)
    paths = {it.id: it.image for it in base.corpus}
    queries, below = _queries(sel, target_type, None, set(paths), "CIRR's val image split", paths,
                             "both-orders")
    return Task(
        metadata=_metadata("cirr", target_type), split=split, queries=queries, corpus=base.corpus,
        protocol=_protocol(protocol, target_type, base.protocol.pseudo_token_template, None,
                           f"all {len(base.corpus)} images of CIRR val (reference kept)", below),
        revision=revision([sel]) + f"+cirr:{base.revision}",
        extra={"selection_file": os.fspath(sel.path), "base_dir": os.fspath(base_dir),
               "targets_below_threshold": below},
    )


def load_fashioniq(target_type: str, data_dir: Path | None, split: str, protocol: str, **options: Any
                   ) -> Task:
    """SoFT's FashionIQ-val variant: per category, queries from the selection file searched within the
    category's val image split (reference eligible), as the base FashionIQ protocol does."""
    name = f"{FAMILY}-fashioniq-{target_type}"
    _check_common(name, target_type, split, protocol, options, FIQ_OPTIONS)
    root = require_data_dir(data_dir, name, LAYOUT)
    check = as_bool(options.get("check_images", True), "check_images")
    join = str(options.get("caption_join", "both-orders"))
    if join not in JOINS:
        raise ValueError(f"option caption_join must be one of {list(JOINS)}, not {join!r}")
    base_opts: dict[str, Any] = {"check_images": check}
    if options.get("categories") is not None:
        base_opts["categories"] = options["categories"]
    base = _load_base("fashioniq", _base_dir(root, "fashioniq", options.get("base_dir")),
                      "official" if join == "both-orders" else join, **base_opts)
    assert base.galleries is not None
    paths = {it.id: it.image for it in base.corpus}
    files: list[JsonFile] = []
    queries: list[Query] = []
    below = 0
    categories = list(base.galleries)  # in the order of the categories option
    for cat in categories:
        sel = read_json(_selection_file(root, target_type, cat), LAYOUT)
        files.append(sel)
        qs, b = _queries(sel, target_type, cat, set(base.galleries[cat]),
                         f"image_splits/split.{cat}.val.json", paths, join)
        queries += qs
        below += b
    sizes = ", ".join(f"{c} {len(g)}" for c, g in base.galleries.items())
    return Task(
        metadata=_metadata("fashioniq", target_type), split=split, queries=queries, corpus=base.corpus,
        protocol=_protocol(protocol, target_type, base.protocol.pseudo_token_template, join,
                           f"per category, the category's val image split ({sizes}); reference kept", below),
        revision=revision(files) + f"+fashioniq:{base.revision}", galleries=base.galleries,
        extra={"categories": categories, "targets_below_threshold": below,
               "selection_files": [os.fspath(f.path) for f in files]},
    )


def _protocol(name: str, target_type: str, template: str | None, join: str | None, gallery: str, below: int
              ) -> Protocol:
    multi = target_type == "multi"
    notes = {
        "source": "jjungyujin/SoFT src/compute_results.py::mt_fiq, get_mt_fiq_metrics, compute_map_at_k, "
                  "get_fiq_metrics; mt_pipeline/MultiTargetDataset/datasets.py",
        "reference": "kept in the gallery (SoFT's code does not remove it)",
        "rounding": "SoFT prints percentages rounded to 2 decimals; cirbench keeps full precision",
        "pseudo_token_template": "the base benchmark's (cirbench's CIRR / FashionIQ protocol)",
    }
    if multi:
        notes["relevance"] = "every key of confidence_scores (as the repo's loader reads them)"
        notes["map"] = ("SoFT's compute_map_at_k: the mean of P@j over the hits j <= K, 0 without a hit "
                        "(normaliser 'hits')" if name == "hits" else
                        "CIRCO's AP@K: sum of P@j at hits j <= K divided by min(K, |G|)")
        if below:
            notes["below_threshold"] = f"{below} listed targets score below the file's threshold; kept"
    else:
        notes["relevance"] = "target_image_name only; comparison_images are hard negatives"
        notes["text"] = "refined_caption"
    if join is not None:  # the FashionIQ variants: scored per category and averaged, as the base benchmark
        notes["caption_join"] = JOIN_NOTES[join]
        notes["aggregate"] = ("each metric per category (SoFT's mt_fiq / fiq score one category's queries "
                              "against its gallery at a time); the overall value is the mean of the "
                              "categories' values, as for FashionIQ, and its interval resamples queries "
                              "within each category")
    return Protocol(
        name=name, metrics=MULTI_METRICS if multi else SINGLE_METRICS,
        main_metric="mAP@5" if multi else "R@1", top_k=50,
        ap_normaliser=NORMALISERS.get(name, "min(K,|G|)"), exclude_reference=False, gallery=gallery,
        text_template="{text}", pseudo_token_template=template, caption_join=join,
        aggregate="queries" if join is None else "categories", notes=notes,
    )


def _loader(base: str, target_type: str) -> Callable[..., Task]:
    fn = load_cirr if base == "cirr" else load_fashioniq

    def load(data_dir: Path | None, split: str, protocol: str, **options: Any) -> Task:
        return fn(target_type, data_dir, split, protocol, **options)
    load.__doc__ = f"Load soft-{base}-{target_type} (see cirbench.tasks.soft)."
    return load


_SIZES = {
    ("cirr", "multi"): "val 4,140 queries (avg 2.89 GTs, max 16) / CIRR val images",
    ("cirr", "single"): "val 2,245 queries / CIRR val images",
    ("fashioniq", "multi"): "val dress 2,011 / shirt 2,032 / toptee 1,958 queries (avg 4.6-4.9 GTs)",
    ("fashioniq", "single"): "val dress 1,827 / shirt 1,681 / toptee 1,666 queries",
}

SPECS = {}
for (_base, _tt), _size in _SIZES.items():
    SPECS[(_base, _tt)] = register_task(TaskSpec(
        metadata=_metadata(_base, _tt), load=_loader(_base, _tt), splits=SPLITS, default_split="val",
        protocols=MULTI_PROTOCOLS if _tt == "multi" else SINGLE_PROTOCOLS, layout=LAYOUT,
        metrics=MULTI_METRICS if _tt == "multi" else SINGLE_METRICS, size=_size, submission=None,
        options=FIQ_OPTIONS if _base == "fashioniq" else OPTIONS, family="soft",
    ))
