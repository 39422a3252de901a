"""FashionIQ (Wu et al., CVPR 2021): three categories, two relative captions per query, scored per category.

Official (zero-shot) protocol, as SEARLE's validate.py runs it: each category searches its own val image
split (`Task.galleries`, `Query.gallery`), the reference stays eligible, and R@10/R@50 are reported per
category and averaged over dress, shirt and toptee. The two captions are joined by a named rule, the
default being SEARLE's both-orders average. Test targets are not public, so papers report on val.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cirbench.core.options import as_bool
from cirbench.core.paths import Root
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.tasks._fashioniq_text import CATEGORIES, JOIN_NOTES, JOINS, join_captions
from cirbench.tasks._files import (
    DirIndex,
    JsonFile,
    check_options,
    expect_list,
    get_field,
    missing_images_error,
    parse_variant,
    read_json,
    require_data_dir,
    revision,
    typed_list,
    variant_names,
)
from cirbench.tasks.registry import TaskSpec, register_task

NAME = "fashioniq"
SPLITS = ("val", "train", "test")
EXTENSIONS = (".png", ".jpg")
"""Both occur: SEARLE's download has .jpg, the Pic2Word / SoFT / Paracosm copies .png."""

METRICS = ("R@10", "R@50")
"""Per category and, as the headline, their mean over the categories (Protocol.aggregate)."""
GALLERIES = ("category-val", "union-val", "reference-excluded", "val-pairs")
AXES = (GALLERIES, JOINS)
PROTOCOLS = variant_names(AXES)

TEMPLATES = {
    "both-orders": "a photo of $ that {text}",
    "c1-and-c2": "{text}",
    "c2-and-c1": "a photo of * , {text}",
}
GALLERY_NOTES = {
    "category-val": "the category's split.<cat>.<split>.json images; the reference stays eligible (SEARLE, "
                    "CIReVL, Pic2Word; the audit's 'full gallery, reference eligible', used by CSMCIR)",
    "union-val": "the union of the three categories' split.<cat>.<split>.json images, shared by every "
                 "query; reference eligible (a merged pool: not comparable to per-category numbers)",
    "reference-excluded": "the category's image split with the reference removed (the audit's 'full "
                          "gallery, reference excluded': Air-Know, ConeSep, HABIT, INTENT)",
    "val-pairs": "per category, only the images named as candidate or target in cap.<cat>.<split>.json, "
                 "reference removed (the audit's 'val split': HINT, ENCODER, PAIR) [per-category reading "
                 "unverified]",
}
OPTIONS = {
    "check_images": "true (default) or false: fail fast when image files are missing",
    "image_dir": "folder holding <ASIN>.png / <ASIN>.jpg (default <data-dir>/images)",
    "categories": "comma-separated subset of dress,shirt,toptee (default all three)",
    "image_ext": "auto (default: whichever file exists, .png first), png or jpg",
}

LAYOUT = """\
  FashionIQ (XiaoxiaoGuo/fashion-iq annotations, images from hongwang600/fashion-iq-metadata):
    <data-dir>/captions/cap.{dress,shirt,toptee}.{train,val,test}.json
    <data-dir>/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json
    <data-dir>/images/<ASIN>.png  or  <ASIN>.jpg          (either extension; both occur)
  --task-option image_dir=DIR overrides the image folder."""

METADATA = TaskMetadata(
    instructions={"query": "Find an image to match the fashion image and style note."},
    name=NAME,
    description="Fashion product images (dress, shirt, toptee) with two relative captions per query; "
                "R@10 and R@50 per category within the category's gallery.",
    source="https://github.com/XiaoxiaoGuo/fashion-iq",
    license="CDLA (annotations); images: not licensed",
    citation="""@inproceedings{wu2021fashion,
  title     = {Fashion IQ: A New Dataset Towards Retrieving Images by Natural Language Feedback},
  author    = {Wu, Hui and Gao, Yupeng and Guo, Xiaoxiao and Al-Halah, Ziad and Rennie, Steven and
               Grauman, Kristen and Feris, Rogerio},
  booktitle = {CVPR},
  year      = {2021}
}""",
    pitfalls=(
        "Each category is searched within its own val image split; averages are over the 3 categories.",
        "The two captions must be joined; SEARLE averages both orders, CIReVL uses 'c1 and c2', Pic2Word "
        "'c2 and c1'. Results differ by join: the rule is recorded in the protocol.",
        "Gallery protocols differ across papers (category split, merged pool, reference excluded, pairs "
        "only); numbers under different ones are not comparable.",
        "Images come as .png or .jpg depending on the download.",
        "Test targets are not public: papers report on val.",
    ),
)


def _categories(value: Any) -> tuple[str, ...]:
    if value is None:
        return CATEGORIES
    cats = tuple(c.strip() for c in str(value).split(",") if c.strip())
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        raise ValueError(f"option categories must name some of {list(CATEGORIES)}, not {value!r}")
    return tuple(dict.fromkeys(cats))


class _Images:
    """ASIN -> image path with the extension that exists (one scan of the image folder)."""

    def __init__(self, image_dir: Path, ext: str) -> None:
        if ext not in ("auto", "png", "jpg"):
            raise ValueError(f"option image_ext must be auto, png or jpg, not {ext!r}")
        self.dir, self.base = image_dir, os.fspath(image_dir)
        self.exts = EXTENSIONS if ext == "auto" else (f".{ext}",)
        self.names = DirIndex().names(image_dir)
        self.guard = Root(image_dir, what="the FashionIQ image folder")
        self.missing: dict[str, str] = {}
        self._paths: dict[str, Path] = {}

    def check(self, asin: str, *, file: Path, record: int, field: str | None = None) -> str:
        """An ASIN names one file of the image folder: no separators, `..`, or symlink out of it."""
        self.guard.join(self.guard.name(asin, file=file, record=record, field=field) + self.exts[0],
                        file=file, record=record, field=field)
        return asin

    def path(self, asin: str) -> Path:
        if asin not in self._paths:
            name = next((asin + e for e in self.exts if asin + e in self.names), None)
            if name is None:
                name = self.missing.setdefault(asin, asin + self.exts[0])
            self._paths[asin] = self.guard.join(name)
        return self._paths[asin]


def load(data_dir: Path | None, split: str, protocol: str = "official", **options: Any) -> Task:
    """Read captions and image splits of each category into one Task with a gallery per category."""
    check_options(options, OPTIONS, NAME)
    if split not in SPLITS:
        raise ValueError(f"FashionIQ has no split {split!r}; splits: {list(SPLITS)}")
    gallery_rule, join = parse_variant(protocol, AXES)
    check = as_bool(options.get("check_images", True), "check_images")
    cats = _categories(options.get("categories"))
    root = require_data_dir(data_dir, NAME, LAYOUT)
    images = _Images(Path(options.get("image_dir") or root / "images"), str(options.get("image_ext", "auto")))
    labelled = split != "test"
    if gallery_rule == "val-pairs" and not labelled:
        raise ValueError("protocol val-pairs builds the gallery from targets, which the test split lacks")

    files: list[JsonFile] = []
    galleries: dict[str, list[str]] = {}
    queries: list[Query] = []
    for cat in cats:
        caps_f = read_json(root / "captions" / f"cap.{cat}.{split}.json", LAYOUT)
        split_f = read_json(root / "image_splits" / f"split.{cat}.{split}.json", LAYOUT)
        files += [caps_f, split_f]
        split_ids = _image_split(split_f, images)
        cat_queries = _queries(caps_f, cat, split, join, images, gallery_rule, labelled)
        if gallery_rule == "val-pairs":
            ids = [x for q in cat_queries for x in (q.reference_id, *q.relevant_ids) if x is not None]
            galleries[cat] = list(dict.fromkeys(ids))
        else:
            galleries[cat] = split_ids
        _check_targets(cat_queries, set(galleries[cat]), caps_f, split_f)
        queries += cat_queries

    corpus_ids = list(dict.fromkeys(i for cat in cats for i in galleries[cat]))
    corpus = [Item(id=i, image=images.path(i)) for i in corpus_ids]
    if check and images.missing:
        missing = [os.path.join(images.base, name) for name in images.missing.values()]
        n_total = len(corpus_ids) + len({q.reference_id for q in queries} - set(corpus_ids))
        raise missing_images_error(missing, n_total, task=NAME, split=split, root=images.dir,
                                   layout=LAYOUT)
    per_category = gallery_rule != "union-val"
    return Task(
        metadata=METADATA, split=split, queries=queries, corpus=corpus,
        protocol=_protocol(protocol, gallery_rule, join),
        revision=revision(files), has_labels=labelled,
        galleries=galleries if per_category else None,
        extra={"categories": list(cats), "image_dir": images.base,
               "gallery_sizes": {c: len(g) for c, g in galleries.items()}},
    )


def _image_split(split_f: JsonFile, images: _Images) -> list[str]:
    ids = expect_list(split_f, "a JSON list of image ids (ASINs)")
    for n, asin in enumerate(ids):
        if not isinstance(asin, str) or not asin:
            raise DatasetError(f"image id must be a non-empty string, found {asin!r}", file=split_f.path,
                               record=n)
        images.check(asin, file=split_f.path, record=n)
    return list(dict.fromkeys(ids))


def _queries(caps_f: JsonFile, cat: str, split: str, join: str, images: _Images, gallery_rule: str,
             labelled: bool) -> list[Query]:
    f = caps_f.path
    out: list[Query] = []
    for n, rec in enumerate(expect_list(caps_f, "a JSON list of triplet records")):
        candidate = images.check(get_field(rec, "candidate", str, file=f, record=n), file=f, record=n,
                                 field="candidate")
        target = get_field(rec, "target", str, file=f, record=n, optional=not labelled)
        if target is not None:
            images.check(target, file=f, record=n, field="target")
        caps = typed_list(rec, "captions", file=f, record=n)
        assert caps is not None
        if len(caps) != 2:
            raise DatasetError(f"expected exactly 2 relative captions, found {len(caps)}", file=f, record=n,
                               field="captions")
        text, alts = join_captions(caps[0], caps[1], join)
        qid = f"{cat}-{n}"
        image = images.path(candidate)
        out.append(Query(
            id=qid, item=Item(id=qid, image=image, text=text),
            relevant_ids=(target,) if target is not None else (), reference_id=candidate,
            category=cat, gallery=None if gallery_rule == "union-val" else cat,
            alt_items=tuple(Item(id=f"{qid}#{j}", image=image, text=t) for j, t in enumerate(alts, 1)),
            meta={"candidate": candidate, "target": target, "captions": list(caps)},
        ))
    return out


def _check_targets(queries: list[Query], gallery: set[str], caps_f: JsonFile, split_f: JsonFile) -> None:
    """A target outside its gallery would make the query unanswerable: fail at load, naming it."""
    for q in queries:
        for t in q.relevant_ids:
            if t not in gallery:
                raise DatasetError(f"target {t!r} is not in {split_f.path.name}", file=caps_f.path,
                                   record=int(q.id.rsplit("-", 1)[1]), field="target")


def _protocol(name: str, gallery_rule: str, join: str) -> Protocol:
    notes = {
        "source": "miccunifi/SEARLE src/validate.py::fiq_val_retrieval, fiq_compute_val_metrics",
        "aggregate": "R@K per category (Query.category); the overall R@K is the mean of the loaded "
                     "categories' values (SEARLE fiq_val_retrieval per category, then averaged), not the "
                     "pooled mean over queries; its interval resamples queries within each category. "
                     "Papers also quote (mean R@10 + mean R@50) / 2",
        "gallery": GALLERY_NOTES[gallery_rule],
        "caption_join": JOIN_NOTES[join],
        "pseudo_token_template": "the prompt of the code whose join rule is used; "
                                 "'$' (SEARLE) and '*' (Pic2Word) "
                         "mark the pseudo-token of textual-inversion models. Models that embed the "
                         "reference image themselves use the joined text alone.",
    }
    return Protocol(
        name=name, metrics=METRICS, main_metric="R@10", top_k=50, ap_normaliser="min(K,|G|)",
        exclude_reference=gallery_rule in ("reference-excluded", "val-pairs"),
        gallery=gallery_rule, text_template="{text}", pseudo_token_template=TEMPLATES[join],
        caption_join=join, aggregate="categories", notes=notes,
    )


SPEC = register_task(TaskSpec(
    metadata=METADATA, load=load, splits=SPLITS, default_split="val", protocols=PROTOCOLS, layout=LAYOUT,
    metrics=METRICS,
    size="val: dress 2,017 queries / 3,817 images, shirt 2,038 / 6,346, toptee 1,961 / 5,373 "
         "(test captions only: no public targets)",
    submission=None, options=OPTIONS,
))
