"""EDIR (Song et al., ACL 2026): a fine-grained CIR benchmark built by image editing.

The public release (HF dataset `EDIR-BENCH/EDIR`) holds `queries.jsonl`, `corpus.jsonl`, `instances.jsonl`
and the images in a split tar (`imgs_mc.tar.part*`), as read by mteb `scripts/data/edir/create_data.py`.
Each query has one positive (`instances.pos`) and sibling edits as negatives (`instances.neg`). R@1 is the
headline; R@5, R@10 and mAP@10 are reported too, per subcategory (`metadata.subcategory`, 15) and per main
category (5, by the taxonomy), plus overall.

The public corpus has 28,645 images; the paper ranked 178,645 (the release dropped distractors), so
published numbers and numbers on the release are not comparable. The corpus size is recorded in the protocol.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from cirbench.core.options import as_bool
from cirbench.core.paths import Root
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.tasks._files import DirIndex, check_images, check_options, group_by_dir, require_data_dir
from cirbench.tasks.registry import TaskSpec, register_task

NAME = "edir"
SPLITS = ("test",)
PROTOCOLS = ("official",)
HUB_ID = "EDIR-BENCH/EDIR"
HUB_REVISION = "2aed46dc8473b0068e978a98c61f4843b0a586a7"
"""The revision mteb's create_data.py pins."""
MANIFESTS = ("queries.jsonl", "corpus.jsonl", "instances.jsonl")
ARCHIVE_PREFIX = "imgs_mc.tar.part"
IMAGE_DIRS = ("imgs_mc", "images", "media")
PUBLIC_CORPUS_SIZE = 28_645
PAPER_CORPUS_SIZE = 178_645
METRICS = ("R@1", "R@5", "R@10", "mAP@10")
"""R@1 is the paper's headline [secondary sources]; mAP@10 is the mAP that mteb's EDIRIT2IRetrieval reports
(`map_at_10`, pytrec_eval map_cut.10). Not an uncut mAP over the whole ranking: with one positive per query
that would equal the full-ranking MRR, a different number that neither reports."""
INSTRUCTION = "Given an image, find a similar image satisfying the query."
"""The query instruction of mteb's EDIRIT2IRetrieval task."""

TAXONOMY = {
    "Color": "Attribute", "Material": "Attribute", "Shape": "Attribute", "Texture": "Attribute",
    "Addition": "Object", "Remove": "Object", "Replace": "Object", "Count": "Object",
    "Spatial": "Relationship", "Action": "Relationship", "Viewpoint": "Relationship",
    "Style": "Global Environment", "Time": "Global Environment", "Weather": "Global Environment",
    "Complex": "Complex",
}
"""Subcategory -> main category (benchmarks.md §4, from a secondary source: unverified against the paper)."""

OPTIONS = {
    "check_images": "true (default) or false: fail fast when image files are missing",
    "image_dir": "folder holding the extracted images (default: the first of imgs_mc/, images/, media/ "
                 "or the data directory itself that holds them)",
    "extract": "true (default) or false: extract missing images from imgs_mc.tar.part* once",
    "revision": f"hub revision when --data-dir is {HUB_ID} (default {HUB_REVISION[:12]}...)",
}

LAYOUT = f"""\
  EDIR (huggingface.co/datasets/{HUB_ID}, revision {HUB_REVISION[:12]}...):
    <data-dir>/queries.jsonl     {{"id", "image" (reference file), "text", "metadata": {{"subcategory"}}}}
    <data-dir>/corpus.jsonl      {{"id", "image" (= id)}}
    <data-dir>/instances.jsonl   {{"qid", "pos": [one corpus id], "neg": [corpus ids]}}
    <data-dir>/imgs_mc/<image>   the images, or <data-dir>/imgs_mc.tar.part* (extracted on first load)
  --data-dir {HUB_ID} downloads the pinned revision with huggingface_hub.snapshot_download."""

METADATA = TaskMetadata(
    name=NAME,
    description="EDIR: 5,000 composed queries whose targets were made by instruction-guided image editing; "
                "15 edit subcategories in 5 main categories; one positive per query, sibling edits as hard "
                "negatives.",
    source=f"https://huggingface.co/datasets/{HUB_ID}; code https://github.com/SighingSnow/edir",
    license="MIT (per the mteb task metadata; unverified against the dataset card)",
    citation="""@inproceedings{song2026edir,
  title     = {Rethinking Composed Image Retrieval Evaluation: A Fine-Grained Benchmark from Image Editing},
  author    = {Song and others},
  booktitle = {Proceedings of ACL (main)},
  year      = {2026},
  pages     = {46224--46242},
  note      = {arXiv:2601.16125; https://aclanthology.org/2026.acl-long.2144/}
}""",
    taxonomy=TAXONOMY,
    pitfalls=(
        f"The public corpus has {PUBLIC_CORPUS_SIZE:,} images; the paper's has {PAPER_CORPUS_SIZE:,} (extra "
        "distractors): numbers on the release are not comparable with the paper's.",
        "The main-category taxonomy comes from a secondary source; per-subcategory results use the file's "
        "own labels.",
        "mAP@10 equals MRR@10 here: every query has exactly one positive.",
    ),
    instructions={"query": INSTRUCTION},
)


# ----------------------------------------------------------------------------------------------------
# Source: a local directory or the pinned hub revision
# ----------------------------------------------------------------------------------------------------


def is_hub_id(data_dir: Path | str | None) -> bool:
    """True for the hub id (as given to --data-dir) when no local directory of that name exists."""
    if data_dir is None:
        return False
    s = Path(data_dir).as_posix().rstrip("/")
    return s in (HUB_ID, f"hf://datasets/{HUB_ID}", f"datasets/{HUB_ID}") and not Path(data_dir).is_dir()


def resolve_source(data_dir: Path | None, revision: str | None = None) -> tuple[Path, str | None]:
    """(local directory, hub revision or None). Only the hub id ever reaches the network."""
    if is_hub_id(data_dir):
        from huggingface_hub import snapshot_download

        rev = revision or HUB_REVISION
        local = snapshot_download(HUB_ID, revision=rev, repo_type="dataset")
        return Path(local), rev
    if revision is not None:
        raise ValueError(f"option revision applies only to --data-dir {HUB_ID}")
    return require_data_dir(data_dir, NAME, LAYOUT), None


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> tuple[list[tuple[int, Any]], str]:
    """(line number, parsed object) per non-empty line and the file's sha1; DatasetError naming the line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DatasetError(f"manifest is missing. Expected layout:\n{LAYOUT}", file=path) from e
    except OSError as e:
        raise DatasetError(f"manifest cannot be read: {e}", file=path) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"manifest is not UTF-8: {e}", file=path) from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DatasetError(f"malformed JSON: {e}", file=path, record=f"line {n}") from e
    return out, hashlib.sha1(raw).hexdigest()


def _str_field(rec: Any, name: str, path: Path, record: str) -> str:
    if not isinstance(rec, dict):
        raise DatasetError(f"expected a JSON object, found {type(rec).__name__}", file=path, record=record)
    if name not in rec:
        raise DatasetError("required field is missing", file=path, record=record, field=name)
    value = rec[name]
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise DatasetError(f"expected a non-empty string, found {value!r:.60}", file=path, record=record,
                           field=name)
    return str(value)


def _id_list(rec: dict[str, Any], name: str, path: Path, record: str) -> list[str]:
    value = rec.get(name)
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, str | int) for v in value):
        raise DatasetError(f"expected a list of ids, found {value!r:.60}", file=path, record=record,
                           field=name)
    return [str(v) for v in value]


def canonical_subcategory(label: str) -> str | None:
    """The taxonomy's name for a subcategory label ('color', 'Color', ' COLOR ' -> 'Color'), else None."""
    key = re.sub(r"[\s_-]+", " ", label).strip().lower()
    for sub in TAXONOMY:
        if sub.lower() == key:
            return sub
    return None


# ----------------------------------------------------------------------------------------------------
# Images from the split tar
# ----------------------------------------------------------------------------------------------------


class _Concatenated(io.RawIOBase):
    """Several files read back to back as one stream (the tar is split into parts)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths: Iterator[Path] = iter(paths)
        self._fh: io.FileIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        while True:
            if self._fh is None:
                nxt = next(self._paths, None)
                if nxt is None:
                    return 0
                self._fh = io.FileIO(nxt, "rb")
            n = self._fh.readinto(view)
            if n:
                return n
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


def archive_parts(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(ARCHIVE_PREFIX) and p.is_file())


def extract_images(parts: list[Path], out_dir: Path, required: set[str]) -> int:
    """Stream the split tar once and write the members whose base name is in `required` (flattened, as
    mteb's create_data.py does); returns how many were written. Member paths never escape `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    stream = _Concatenated(parts)
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = PurePosixPath(member.name).name
                if name not in required:
                    continue
                src = archive.extractfile(member)
                if src is None:
                    raise DatasetError("archive member cannot be read", file=parts[0], record=member.name)
                dest = out_dir / name
                tmp = dest.with_name(f".{name}.{os.getpid()}.tmp")
                with tmp.open("wb") as fh:
                    shutil.copyfileobj(src, fh)
                os.replace(tmp, dest)
                written += 1
    except tarfile.TarError as e:
        raise DatasetError(f"image archive is not a readable tar: {e}", file=parts[0]) from e
    finally:
        stream.close()
    return written


def _image_dir(root: Path, option: str | None, probe: str, extract: bool, required: set[str],
               cache_dir: Path | None) -> Path:
    """The folder holding the images; extract them from the split tar when they are not there yet."""
    if option is not None:
        return Path(option)
    index = DirIndex()
    for cand in (*(root / d for d in IMAGE_DIRS), root):
        if probe in index.names(cand):
            return cand
    parts = archive_parts(root)
    target = cache_dir if cache_dir is not None else root / IMAGE_DIRS[0]
    if probe in index.names(target):
        return target
    if parts and extract:
        extract_images(parts, target, required)
        return target
    return root / IMAGE_DIRS[0]


# ----------------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------------


def load(data_dir: Path | None, split: str, protocol: str = "official", **options: Any) -> Task:
    """Read the three manifests (and extract images once when only the tar parts are there) into a Task."""
    check_options(options, OPTIONS, NAME)
    if split not in SPLITS:
        raise ValueError(f"EDIR has no split {split!r}; splits: {list(SPLITS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"EDIR has no protocol {protocol!r}; protocols: {list(PROTOCOLS)}")
    check = as_bool(options.get("check_images", True), "check_images")
    extract = as_bool(options.get("extract", True), "extract")
    root, hub_rev = resolve_source(data_dir, options.get("revision"))

    corpus_rows, corpus_sha = read_jsonl(root / "corpus.jsonl")
    query_rows, query_sha = read_jsonl(root / "queries.jsonl")
    inst_rows, inst_sha = read_jsonl(root / "instances.jsonl")
    corpus_files = _corpus(corpus_rows, root / "corpus.jsonl")
    instances = _instances(inst_rows, root / "instances.jsonl", corpus_files)
    parsed = _parse_queries(query_rows, root / "queries.jsonl", instances)

    # every image name stays inside the image folder (checked before anything is extracted)
    pre = Root(root)
    for cid, fname in corpus_files.items():
        pre.join(fname, file=root / "corpus.jsonl", record=cid, field="image")
    for qid, image, *_ in parsed:
        pre.join(image, file=root / "queries.jsonl", record=qid, field="image")
    required = set(corpus_files.values()) | {p[1] for p in parsed}
    probe = next(iter(corpus_files.values()))
    cache = None
    if hub_rev is not None:
        from cirbench.core.cache import default_cache_dir

        cache = default_cache_dir() / "datasets" / f"edir-{hub_rev[:12]}" / IMAGE_DIRS[0]
    image_dir = _image_dir(root, options.get("image_dir"), probe, extract, required, cache)
    base = os.fspath(image_dir)
    guard = Root(image_dir, what="the EDIR image folder")
    corpus_paths = {cid: guard.join(fname, file=root / "corpus.jsonl", record=cid, field="image")
                    for cid, fname in corpus_files.items()}
    query_paths = {qid: guard.join(image, file=root / "queries.jsonl", record=qid, field="image")
                   for qid, image, *_ in parsed}
    if check:
        check_images(group_by_dir(map(os.fspath, [*corpus_paths.values(), *query_paths.values()])),
                     task=NAME, split=split, root=image_dir, layout=LAYOUT, index=DirIndex())

    corpus = [Item(id=cid, image=corpus_paths[cid]) for cid in corpus_files]
    unmapped: dict[str, int] = {}
    queries = []
    for qid, image, text, label, main, pos, neg in parsed:
        sub = canonical_subcategory(label)
        category = TAXONOMY[sub] if sub is not None else main
        if sub is None:
            unmapped[label] = unmapped.get(label, 0) + 1
        queries.append(Query(
            id=qid, item=Item(id=qid, image=query_paths[qid], text=text), relevant_ids=(pos,),
            reference_id=image, category=category, subcategory=sub or label, hard_negative_ids=tuple(neg),
            meta={"subcategory_label": label, "reference_image": image},
        ))
    digest = hashlib.sha1(f"{corpus_sha}:{query_sha}:{inst_sha}".encode()).hexdigest()[:16]
    return Task(
        metadata=METADATA, split=split, queries=queries, corpus=corpus,
        protocol=_protocol(len(corpus), unmapped),
        revision=f"hub:{HUB_ID}@{hub_rev}" if hub_rev else f"sha1:{digest}",
        extra={"dataset_dir": os.fspath(root), "image_dir": base, "corpus_size": len(corpus),
               "hub_revision": hub_rev, "unmapped_subcategories": unmapped},
    )


def _corpus(rows: list[tuple[int, Any]], path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, rec in rows:
        cid = _str_field(rec, "id", path, f"line {n}")
        image = _str_field(rec, "image", path, cid) if "image" in rec else cid
        if cid in out:
            raise DatasetError("duplicate corpus id", file=path, record=cid, field="id")
        out[cid] = image
    if not out:
        raise DatasetError("the corpus is empty", file=path)
    return out


def _instances(rows: list[tuple[int, Any]], path: Path, corpus: dict[str, str]
               ) -> dict[str, tuple[str, list[str]]]:
    out: dict[str, tuple[str, list[str]]] = {}
    for n, rec in rows:
        qid = _str_field(rec, "qid", path, f"line {n}")
        pos = _id_list(rec, "pos", path, qid)
        neg = _id_list(rec, "neg", path, qid)
        if len(pos) != 1:
            raise DatasetError(f"expected exactly one positive, found {len(pos)}", file=path, record=qid,
                               field="pos")
        for fname, ids in (("pos", pos), ("neg", neg)):
            for cid in ids:
                if cid not in corpus:
                    raise DatasetError(f"corpus id {cid!r} is not in corpus.jsonl", file=path, record=qid,
                                       field=fname)
        if qid in out:
            raise DatasetError("duplicate query id", file=path, record=qid, field="qid")
        out[qid] = (pos[0], [c for c in dict.fromkeys(neg) if c != pos[0]])
    return out


def _parse_queries(rows: list[tuple[int, Any]], path: Path, instances: dict[str, tuple[str, list[str]]]
                   ) -> list[tuple[str, str, str, str, str | None, str, list[str]]]:
    out = []
    seen: set[str] = set()
    for n, rec in rows:
        qid = _str_field(rec, "id", path, f"line {n}")
        image = _str_field(rec, "image", path, qid)
        text = rec.get("text")
        if not isinstance(text, str):
            raise DatasetError(f"expected a string, found {text!r:.60}", file=path, record=qid, field="text")
        meta = rec.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("subcategory"), str):
            raise DatasetError("metadata.subcategory must be a string", file=path, record=qid,
                               field="metadata.subcategory")
        main = meta.get("category") if isinstance(meta.get("category"), str) else None
        if qid in seen:
            raise DatasetError("duplicate query id", file=path, record=qid, field="id")
        seen.add(qid)
        if qid not in instances:
            raise DatasetError("query has no record in instances.jsonl", file=path, record=qid)
        pos, neg = instances[qid]
        out.append((qid, image, text, meta["subcategory"], main, pos, neg))
    extra = set(instances) - seen
    if extra:
        raise DatasetError(f"{len(extra)} instances have no query (first: {sorted(extra)[0]!r})",
                           file=path.with_name("instances.jsonl"))
    return out


def _protocol(n_corpus: int, unmapped: dict[str, int]) -> Protocol:
    comparable = n_corpus == PAPER_CORPUS_SIZE
    notes = {
        "source": "mteb scripts/data/edir/create_data.py + EDIRIT2IRetrieval (main score recall_at_1)",
        "corpus_size": str(n_corpus),
        "corpus_size_public_release": str(PUBLIC_CORPUS_SIZE),
        "corpus_size_paper": str(PAPER_CORPUS_SIZE),
        "comparability": "same corpus size as the paper" if comparable else
                         f"{n_corpus:,}-image corpus, not the paper's {PAPER_CORPUS_SIZE:,}: numbers are "
                         "NOT comparable with the paper's tables",
        "relevance": "instances.pos (one corpus id); instances.neg are sibling edits (hard_negative_ids)",
        "breakdown": "per subcategory (metadata.subcategory) and per main category (taxonomy)",
        "map": "mAP@10: the mAP the readable EDIR evaluator reports (mteb EDIRIT2IRetrieval, map_at_10 = "
               "pytrec_eval map_cut.10, normalised by |G|; with one positive per query min(10, |G|) = |G| "
               "= 1, so it equals MRR@10). The paper's headline is R@1; its own evaluator (SighingSnow/edir "
               "main.py) was not available to check. An uncut mAP over the whole ranking (= the "
               "full-ranking MRR here) is a different number and is not reported",
        "reference": "kept: the reference image is not part of the released corpus",
        "instruction": INSTRUCTION,
    }
    if unmapped:
        notes["unmapped_subcategories"] = ", ".join(f"{k} ({v})" for k, v in sorted(unmapped.items()))
    return Protocol(
        name="official", metrics=METRICS, main_metric="R@1", top_k=50, ap_normaliser="min(K,|G|)",
        exclude_reference=False,
        gallery=f"all {n_corpus} images of corpus.jsonl (paper: {PAPER_CORPUS_SIZE:,})", notes=notes,
    )


SPEC = register_task(TaskSpec(
    metadata=METADATA, load=load, splits=SPLITS, default_split="test", protocols=PROTOCOLS, layout=LAYOUT,
    metrics=METRICS,
    size=f"test 5,000 queries / {PUBLIC_CORPUS_SIZE:,} images (public release; paper {PAPER_CORPUS_SIZE:,})",
    submission=None, options=OPTIONS,
))
