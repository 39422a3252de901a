"""MMLandmarks (Kristoffersen et al., CVPR 2026): cross-view, text-to-image and geolocalisation tasks.

Seven tasks over the released layout (Oshkr/mmlandmarks, read by Oshkr/mml-codebase):

* retrieval `mmlandmarks-{g2s,s2g,t2s,t2g}` (ground/satellite/text query -> satellite/ground gallery): the
  gallery is the index set (distractors) plus the query split's items of the target modality; positives are
  the items of the query's landmark. R@1/5/10, Market-1501 mAP over the top 1,000, median rank.
* geolocalisation `mmlandmarks-{g2c,s2c,t2c}`: the prediction is the GPS of the top-1 gallery item; accuracy
  within 1/25/200/750/2,500 km (`cirbench.core.geo`).

Protocols of the retrieval tasks. `paper-code` reproduces `mml-codebase/mmlandmarks/metrics.py`: every index
item is *junk*; R@K ranks after junk is removed, mAP@1k cuts the full ranking at 1,000 and then drops junk,
and the median rank uses the full gallery (benchmarks.md §8 item 7). `full-gallery` treats index items as
ordinary negatives. Galleries are large (714k ground images): Items hold paths, and no image is opened here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cirbench.core.geo import GEO_THRESHOLDS_KM, check_latlon, geo_metric_name, gps_columns, gps_text
from cirbench.core.metrics import hit_matrix, parse_metric, per_query_metrics
from cirbench.core.options import as_bool
from cirbench.core.paths import Root
from cirbench.core.protocol import register_scorer
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.tasks._files import (
    CsvFile,
    DirIndex,
    check_images,
    check_options,
    group_by_dir,
    read_csv,
    require_data_dir,
)
from cirbench.tasks.registry import TaskSpec, register_task

FAMILY = "mmlandmarks"
SPLITS = ("query",)
RETRIEVAL = {"g2s": ("ground", "satellite"), "s2g": ("satellite", "ground"),
             "t2s": ("text", "satellite"), "t2g": ("text", "ground")}
GEO = {"g2c": "ground", "s2c": "satellite", "t2c": "text"}
RETRIEVAL_PROTOCOLS = ("paper-code", "full-gallery")
GEO_PROTOCOLS = ("satellite-tiles", "gps-gallery")
"""satellite-tiles (default): the gallery is satellite tiles, so any image model can be scored.
gps-gallery: mml-codebase's own gallery of GPS points (index satellite coordinates + one point per query
landmark, in that order), for models with a location encoder (corpus modality "gps", e.g. MML-CLIP)."""
GPS_CORPUS = "gps"
TEXT_SAMPLING = ("no_cues", "first", "random")
TEXT_SEED = 42
"""`_load_text_data` calls random.seed(42) before sampling (mml-codebase eval_dataset.py)."""
JUNK_PREFIX = "index/"
"""Corpus ids of index (distractor) items start with this; query-split items with "query/"."""
MAP_TOPK = 1000
GEO_METRICS = ("R@1", "R@5", "R@10", *(geo_metric_name(t) for t in GEO_THRESHOLDS_KM))


def retrieval_metrics(protocol: str) -> tuple[str, ...]:
    """paper-code reports the paper's R@K, which is cirbench's R_s@K (ranked after junk removal)."""
    ks = (1, 5, 10)
    recall = tuple(f"R_s@{k}" if protocol == "paper-code" else f"R@{k}" for k in ks)
    return (*recall, f"mAP@{MAP_TOPK}", "MedR")

EXTENSIONS = {"ground": "jpg", "satellite": "png", "text": "json"}
OPTIONS = {
    "check_images": "true (default) or false: fail fast when image files are missing (one directory scan "
                    "per shard folder)",
    "text_sampling": "text queries: no_cues (default; mml_query_text_sentences.csv), first or random "
                     "(a sentence of the Wikipedia JSON, random.seed(42) as in mml-codebase)",
}

LAYOUT = """\
  MMLandmarks v1.0 (github.com/Oshkr/mmlandmarks; files from archive.compute.dtu.dk/.../MMLandmarks):
    <data-dir>/mmlandmarks.csv                     (optional here)
    <data-dir>/query/mml_query.csv                 landmark_id, CommonsCategory, lat, lon
    <data-dir>/query/mml_query_ground.csv          landmark_id, images (space-separated ids)
    <data-dir>/query/mml_query_satellite.csv       landmark_id, images (latest tile per landmark)
    <data-dir>/query/mml_query_all_satellite.csv   landmark_id, images (all years; geolocalisation)
    <data-dir>/query/mml_query_text.csv            landmark_id, json
    <data-dir>/query/mml_query_text_sentences.csv  landmark_id, sentences (text_sampling=no_cues)
    <data-dir>/index/mml_index_ground.csv          images, gldv2_id
    <data-dir>/index/mml_index_satellite.csv       images, lat, lon, year
    <data-dir>/{query,index}/{ground,satellite,text}/<a>/<b>/<c>/<id>.{jpg,png,json}
      (a, b, c = the first three characters of the id, as in GLDv2)"""

CITATION = """@inproceedings{kristoffersen2026mmlandmarks,
  title     = {MMLandmarks},
  author    = {Kristoffersen and others},
  booktitle = {CVPR},
  year      = {2026},
  note      = {arXiv:2512.17492; full title and author list unverified}
}"""

PITFALLS = (
    "paper-code: index items are junk. R@K is ranked after junk is removed (so only the query split's items "
    "compete), mAP@1k cuts the full ranking at 1,000 before removing junk, median rank uses the full "
    "gallery. full-gallery numbers are not comparable with the paper's.",
    "mAP is Market-1501 style: trapezoidal precision, divided by all positives of the query (not "
    "min(K,|G|)).",
    "The query satellite set is the latest tile per landmark (1,000 of 10,631 tiles), as in the paper.",
    "Geolocalisation in mml-codebase ranks a GPS gallery encoded by a location encoder; cirbench ranks the "
    "satellite tiles at the same coordinates (index tiles + query-landmark tiles), so models without a GPS "
    "encoder can be scored; every query landmark's point is in every query's gallery (in S2C a landmark with "
    "a single tile keeps it, although it is the query). Numbers are comparable with the paper only in "
    "spirit.",
    "Protocol gps-gallery is mml-codebase's own geolocalisation gallery (GPS points encoded by a location "
    "encoder); only models that embed modality 'gps' (MML-CLIP) can run it, and its numbers are the ones "
    "comparable with the paper's G2C/S2C/T2C.",
    "Text queries differ by sampling mode (no_cues, first, random); the mode is part of the protocol.",
    "Ties: mml-codebase orders by np.argsort(scores)[::-1] (later gallery items first); cirbench by corpus "
    "position.",
)


DIRECTION_VIEWS = {"g": "ground", "s": "satellite", "t": "text", "c": "gps"}
"""The letters of a direction (g2s, t2c, ...) -> what that side's inputs show (`TaskMetadata.views`)."""


def _views(direction: str, *, gps_gallery: bool) -> dict[str, str]:
    """Per role, what the inputs show; under satellite-tiles a GPS gallery is satellite tiles."""
    views = {"query": DIRECTION_VIEWS[direction[0]], "document": DIRECTION_VIEWS[direction[2]]}
    if views["document"] == "gps" and not gps_gallery:
        views["document"] = "satellite"
    return views


def _metadata(direction: str, *, gps_gallery: bool = False) -> TaskMetadata:
    if direction in RETRIEVAL:
        qmod, gmod = RETRIEVAL[direction]
        desc = (f"MMLandmarks {qmod} -> {gmod} retrieval: 1,000 US landmarks; gallery = index distractors "
                f"+ the query split's {gmod} items.")
    else:
        qmod, gmod = GEO[direction], "satellite"
        desc = (f"MMLandmarks geolocalisation from {qmod} queries: the top-1 satellite tile's GPS is the "
                "prediction; accuracy within 1/25/200/750/2,500 km.")
    return TaskMetadata(
        name=f"{FAMILY}-{direction}", description=desc,
        source="https://github.com/Oshkr/mmlandmarks; evaluator https://github.com/Oshkr/mml-codebase",
        license="ground images CC / public domain (Wikimedia Commons); aerial images public domain (USDA "
                "NAIP); code MIT",
        citation=CITATION, query_modality="text" if qmod == "text" else "image", corpus_modality="image",
        pitfalls=PITFALLS, views=_views(direction, gps_gallery=gps_gallery),
    )


# ----------------------------------------------------------------------------------------------------
# CSV files
# ----------------------------------------------------------------------------------------------------


def _cell(f: CsvFile, n: int, col: str) -> str:
    value = f.rows[n].get(col)
    if value is None or value.strip() == "":
        raise DatasetError("empty value", file=f.path, record=f.record(n), field=col)
    return value.strip()


def _landmark_id(f: CsvFile, n: int) -> str:
    value = _cell(f, n, "landmark_id")
    try:
        return str(int(float(value))) if "." in value else str(int(value))
    except ValueError:
        raise DatasetError(f"landmark_id is not an integer: {value!r}", file=f.path, record=f.record(n),
                           field="landmark_id") from None


def check_id(item_id: str, *, file: Path | None = None, record: str | None = None,
             field: str | None = None) -> str:
    """An id of the release names one file: at least 3 characters (the shard folders), no separators."""
    if len(item_id) < 3:
        raise DatasetError(f"id {item_id!r} is shorter than the 3 characters the sharded layout needs",
                           file=file, record=record or item_id, field=field)
    return Root.name(item_id, file=file, record=record or item_id, field=field)


def shard_rel(split: str, modality: str, item_id: str) -> str:
    """`{split}/{modality}/{a}/{b}/{c}/{id}.{ext}`, the GLDv2-style layout of the release."""
    check_id(item_id)
    return "/".join((split, modality, *item_id[:3], f"{item_id}.{EXTENSIONS[modality]}"))


def shard_path(root: Path, split: str, modality: str, item_id: str) -> Path:
    """`{root}/{split}/{modality}/{a}/{b}/{c}/{id}.{ext}` (the id checked, the path kept inside `root`)."""
    return Root(root).join(shard_rel(split, modality, item_id))


def corpus_id(split: str, modality: str, item_id: str) -> str:
    return f"{split}/{modality}/{item_id}"


# ----------------------------------------------------------------------------------------------------
# Reading the release
# ----------------------------------------------------------------------------------------------------


class _Release:
    """The CSV files of one data directory, each parsed once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.guard = Root(root, what="the MMLandmarks data directory")
        self.files: list[CsvFile] = []

    def item_id(self, f: CsvFile, n: int, value: str, field: str) -> str:
        """An id read from line n of f, checked where it was read (so the error names the line)."""
        return check_id(value, file=f.path, record=f.record(n), field=field)

    def path(self, split: str, modality: str, item_id: str) -> Path:
        """The file of an item, refused if a symlink on the way leads out of the data directory."""
        return self.guard.join(shard_rel(split, modality, item_id), record=item_id, field="images")

    def csv(self, rel: str, required: Sequence[str]) -> CsvFile:
        f = read_csv(self.root / rel, required, LAYOUT)
        self.files.append(f)
        return f

    def revision(self) -> str:
        h = hashlib.sha1()
        for f in self.files:
            h.update(f"{f.path.name}:{f.digest}\n".encode())
        return "sha1:" + h.hexdigest()[:16]

    def landmarks(self) -> dict[str, tuple[float, float]]:
        """landmark_id -> (lat, lon) of the query landmarks (mml_query.csv), range-checked."""
        f = self.csv("query/mml_query.csv", ("landmark_id", "lat", "lon"))
        out: dict[str, tuple[float, float]] = {}
        for n in range(len(f.rows)):
            lid = _landmark_id(f, n)
            out[lid] = check_latlon(f.rows[n]["lat"], f.rows[n]["lon"], file=f.path,
                                    record=f"{f.record(n)}, landmark {lid}")
        return out

    def query_images(self, rel: str) -> list[tuple[str, str]]:
        """(landmark_id, image id) per image of a query CSV whose `images` column is space-separated."""
        f = self.csv(rel, ("landmark_id", "images"))
        out = []
        for n in range(len(f.rows)):
            lid = _landmark_id(f, n)
            for image_id in _cell(f, n, "images").split():
                out.append((lid, self.item_id(f, n, image_id, "images")))
        return out

    def index_images(self, modality: str) -> tuple[list[str], list[tuple[float, float]] | None]:
        """Index ids (and GPS, for satellite tiles)."""
        if modality == "ground":
            f = self.csv("index/mml_index_ground.csv", ("images",))
            return [self.item_id(f, n, _cell(f, n, "images"), "images") for n in range(len(f.rows))], None
        f = self.csv("index/mml_index_satellite.csv", ("images", "lat", "lon"))
        ids, gps = [], []
        for n in range(len(f.rows)):
            image_id = self.item_id(f, n, _cell(f, n, "images"), "images")
            ids.append(image_id)
            gps.append(check_latlon(f.rows[n]["lat"], f.rows[n]["lon"], file=f.path,
                                    record=f"{f.record(n)}, image {image_id}"))
        return ids, gps

    def texts(self, mode: str) -> list[tuple[str, str, str]]:
        """(landmark_id, sentence, source file) per text query, as mml-codebase `_load_text_data` samples."""
        if mode not in TEXT_SAMPLING:
            raise ValueError(f"option text_sampling must be one of {list(TEXT_SAMPLING)}, not {mode!r}")
        if mode == "no_cues":
            f = self.csv("query/mml_query_text_sentences.csv", ("landmark_id", "sentences"))
            return [(_landmark_id(f, n), f.rows[n]["sentences"] or "", f.path.name)
                    for n in range(len(f.rows))]
        f = self.csv("query/mml_query_text.csv", ("landmark_id", "json"))
        rng = random.Random(TEXT_SEED)
        out = []
        for n in range(len(f.rows)):
            lid = _landmark_id(f, n)
            json_id = self.item_id(f, n, _cell(f, n, "json"), "json")
            path = self.path("query", "text", json_id)
            sections = _read_sections(path, f"{f.record(n)} of {f.path.name}, landmark {lid}")
            if mode == "random":
                section = sections[rng.choice(list(sections.keys()))]
                paragraph = rng.choice(section.split("\n"))
                sentence = rng.choice(paragraph.split(". "))
            else:
                sentence = sections[next(iter(sections))].split("\n")[0].split(". ")[0]
            out.append((lid, sentence, os.fspath(path.relative_to(self.root))))
        return out


def _read_sections(path: Path, record: str) -> dict[str, str]:
    """A Wikipedia text file: a JSON object mapping section name to text."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as e:
        raise DatasetError("text file is missing", file=path, record=record) from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"text file is not valid JSON: {e}", file=path, record=record) from e
    if not isinstance(data, dict) or not data or not all(isinstance(v, str) for v in data.values()):
        raise DatasetError("text file must be a non-empty JSON object of section name -> text", file=path,
                           record=record)
    return data


def _check(paths: list[str], root: Path, direction: str) -> None:
    check_images(group_by_dir(paths), task=f"{FAMILY}-{direction}", split="query", root=root, layout=LAYOUT,
                 index=DirIndex())


# ----------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------


def _query_items(rel: _Release, qmod: str, text_sampling: str) -> list[tuple[str, Item, str]]:
    """(landmark_id, query Item, source) for each query of a modality; ids are unique."""
    out: list[tuple[str, Item, str]] = []
    seen: set[str] = set()
    if qmod == "text":
        for lid, sentence, source in rel.texts(text_sampling):
            qid = corpus_id("query", "text", lid)
            if qid in seen:
                raise DatasetError("two text queries for one landmark", file=rel.root / source,
                                   record=f"landmark {lid}")
            seen.add(qid)
            out.append((lid, Item(id=qid, text=sentence), source))
        return out
    csv_name = "query/mml_query_ground.csv" if qmod == "ground" else "query/mml_query_satellite.csv"
    for lid, image_id in rel.query_images(csv_name):
        qid = corpus_id("query", qmod, image_id)
        if qid in seen:
            raise DatasetError("image listed twice", file=rel.root / csv_name, record=image_id)
        seen.add(qid)
        out.append((lid, Item(id=qid, image=rel.path("query", qmod, image_id)), csv_name))
    return out


def load(direction: str, data_dir: Path | None, split: str, protocol: str, **options: Any) -> Task:
    """Read the release for one task direction (see the module docstring)."""
    name = f"{FAMILY}-{direction}"
    text_task = RETRIEVAL.get(direction, (GEO.get(direction),))[0] == "text"
    check_options(options, OPTIONS if text_task else ("check_images",), name)
    if split not in SPLITS:
        raise ValueError(f"{name} has no split {split!r}; splits: {list(SPLITS)}")
    allowed = RETRIEVAL_PROTOCOLS if direction in RETRIEVAL else GEO_PROTOCOLS
    if protocol not in allowed:
        raise ValueError(f"{name} has no protocol {protocol!r}; protocols: {list(allowed)}")
    check = as_bool(options.get("check_images", True), "check_images")
    text_sampling = str(options.get("text_sampling", "no_cues"))
    if text_sampling not in TEXT_SAMPLING:
        raise ValueError(f"option text_sampling must be one of {list(TEXT_SAMPLING)}, not {text_sampling!r}")
    root = require_data_dir(data_dir, name, LAYOUT)
    rel = _Release(root)
    if direction in RETRIEVAL:
        return _retrieval(rel, direction, protocol, check, text_sampling)
    if protocol == "gps-gallery":
        return _geo_gps(rel, direction, protocol, check, text_sampling)
    return _geo(rel, direction, protocol, check, text_sampling)


def _retrieval(rel: _Release, direction: str, protocol: str, check: bool, text_sampling: str) -> Task:
    qmod, gmod = RETRIEVAL[direction]
    landmarks = rel.landmarks()
    index_ids, _ = rel.index_images(gmod)
    gallery_csv = "query/mml_query_ground.csv" if gmod == "ground" else "query/mml_query_satellite.csv"
    positives = rel.query_images(gallery_csv)
    corpus = [Item(id=corpus_id("index", gmod, i), image=rel.path("index", gmod, i))
              for i in index_ids]
    by_landmark: dict[str, list[str]] = {}
    for lid, image_id in positives:
        cid = corpus_id("query", gmod, image_id)
        corpus.append(Item(id=cid, image=rel.path("query", gmod, image_id)))
        by_landmark.setdefault(lid, []).append(cid)
    n_index = len(index_ids)
    paper = protocol == "paper-code"
    candidates = tuple(it.id for it in corpus[n_index:]) if paper else None
    queries = []
    for lid, item, source in _query_items(rel, qmod, text_sampling):
        lat, lon = landmarks.get(lid, (float("nan"), float("nan")))
        queries.append(Query(
            id=item.id, item=item, relevant_ids=tuple(by_landmark.get(lid, ())), candidate_ids=candidates,
            meta={"landmark_id": lid, "lat": lat, "lon": lon, "source": source},
        ))
    if check:
        _check([os.fspath(it.image) for it in corpus if isinstance(it.image, Path)]
               + [os.fspath(q.item.image) for q in queries if isinstance(q.item.image, Path)],
               rel.root, direction)
    return Task(
        metadata=_metadata(direction), split="query", queries=queries, corpus=corpus,
        protocol=_retrieval_protocol(protocol, qmod, gmod, n_index, len(corpus) - n_index, text_sampling),
        revision=rel.revision(),
        extra={"dataset_dir": os.fspath(rel.root), "direction": direction, "n_index": n_index,
               "text_sampling": text_sampling
               if qmod == "text" else None,
               "queries_without_positives": sum(1 for q in queries if not q.relevant_ids)},
    )


def _retrieval_protocol(name: str, qmod: str, gmod: str, n_index: int, n_query_items: int,
                        text_sampling: str) -> Protocol:
    paper = name == "paper-code"
    notes = {
        "source": "Oshkr/mml-codebase mmlandmarks/metrics.py::evaluate_retrieval, _eval_single_query",
        "map": f"mAP@{MAP_TOPK}: Market-1501 AP (trapezoidal precision at each hit, divided by all of the "
               "query's positives) on the top 1,000 of the full ranking"
               + (", index items removed after the cut" if paper else "")
               + "; computed by cirbench.tasks.mmlandmarks.market1501_map (the generic scorer's "
                 "non-interpolated AP is only an approximation)",
        "medr": "median over queries of the 1-based rank of the first positive in the full gallery",
        "relevance": f"query-split {gmod} items of the query's landmark",
        "ties": "cirbench breaks score ties by corpus position; mml-codebase by np.argsort(...)[::-1]",
    }
    if paper:
        notes.update({
            "junk": f"corpus ids starting with {JUNK_PREFIX!r} (all {n_index} index items) are junk "
                    "(the scorer's junk_prefix)",
            "recall": "R_s@K is the paper's R@K: recall after junk removal, i.e. ranked among the query "
                      f"split's {n_query_items} {gmod} items (Query.candidate_ids)",
        })
    else:
        notes["recall"] = "R@K over the full gallery; index items are ordinary negatives"
    if qmod == "text":
        notes["text_sampling"] = text_sampling
    return Protocol(
        name=name, metrics=retrieval_metrics(name), main_metric=f"mAP@{MAP_TOPK}",
        top_k=MAP_TOPK, ap_normaliser="|G|", exclude_reference=False,
        gallery=f"{n_index} index {gmod} items + {n_query_items} query-split {gmod} items",
        scorer=MARKET1501.with_params(junk_prefix=JUNK_PREFIX) if paper else MARKET1501, notes=notes,
    )


def _geo(rel: _Release, direction: str, protocol: str, check: bool, text_sampling: str) -> Task:
    qmod = GEO[direction]
    landmarks = rel.landmarks()
    index_ids, index_gps = rel.index_images("satellite")
    assert index_gps is not None
    all_tiles = rel.root / "query" / "mml_query_all_satellite.csv"
    tiles_csv = ("query/mml_query_all_satellite.csv" if all_tiles.is_file()
                 else "query/mml_query_satellite.csv")
    if qmod == "satellite" and not all_tiles.is_file():
        raise DatasetError("satellite geolocalisation needs the other years' tiles of each query landmark "
                           f"(the query's own tile is excluded). Expected layout:\n{LAYOUT}", file=all_tiles)
    corpus = [Item(id=corpus_id("index", "satellite", i), image=rel.path("index", "satellite", i))
              for i in index_ids]
    gps = list(index_gps)
    by_landmark: dict[str, list[str]] = {}
    seen = {it.id for it in corpus}
    for lid, image_id in rel.query_images(tiles_csv):
        cid = corpus_id("query", "satellite", image_id)
        if cid in seen:
            continue
        if lid not in landmarks:
            raise DatasetError(f"landmark {lid} has no GPS in mml_query.csv", file=rel.root / tiles_csv,
                               record=image_id, field="landmark_id")
        seen.add(cid)
        corpus.append(Item(id=cid, image=rel.path("query", "satellite", image_id)))
        gps.append(landmarks[lid])
        by_landmark.setdefault(lid, []).append(cid)
    queries = []
    single_tile = 0
    for lid, item, source in _query_items(rel, qmod, text_sampling):
        if lid not in landmarks:
            raise DatasetError(f"landmark {lid} has no GPS in mml_query.csv", file=rel.root / source,
                               record=item.id, field="landmark_id")
        if lid not in by_landmark:
            raise DatasetError(f"landmark {lid} has no satellite tile in {tiles_csv}, so its GPS point "
                               "cannot be in the gallery", file=rel.root / tiles_csv, record=item.id,
                               field="landmark_id")
        lat, lon = landmarks[lid]
        tiles = by_landmark[lid]
        own: tuple[str, ...] = ()
        if qmod == "satellite" and item.id in tiles:
            # The query's own tile is excluded while the landmark has another tile at the same GPS point.
            # A single-tile landmark keeps its tile: it is the landmark's point in mml-codebase's GPS
            # gallery (index + query-landmark coordinates), which every query can reach.
            if len(tiles) > 1:
                own = (item.id,)
            else:
                single_tile += 1
        relevant = tuple(c for c in tiles if c not in own and c != item.id)
        queries.append(Query(id=item.id, item=item, relevant_ids=relevant, exclude_ids=own,
                             meta={"landmark_id": lid, "lat": lat, "lon": lon, "source": source}))
    if check:
        _check([os.fspath(it.image) for it in corpus if isinstance(it.image, Path)]
               + [os.fspath(q.item.image) for q in queries if isinstance(q.item.image, Path)],
               rel.root, direction)
    n_index = len(index_ids)
    return Task(
        metadata=_metadata(direction), split="query", queries=queries, corpus=corpus,
        protocol=_geo_protocol(protocol, qmod, n_index, len(corpus) - n_index, tiles_csv, text_sampling,
                               single_tile),
        revision=rel.revision(), gps=np.asarray(gps, dtype=np.float64).reshape(-1, 2),
        run_columns=gps_columns,
        extra={"dataset_dir": os.fspath(rel.root), "direction": direction, "n_index": n_index,
               "text_sampling": text_sampling if qmod == "text" else None},
    )


def _geo_gps(rel: _Release, direction: str, protocol: str, check: bool, text_sampling: str) -> Task:
    """mml-codebase's geolocalisation: the gallery is the GPS points themselves (evaluate_geolocalization.py
    and evaluate_text.py concatenate mml_index_satellite.csv's lat/lon with mml_query.csv's)."""
    qmod = GEO[direction]
    landmarks = rel.landmarks()
    index_ids, index_gps = rel.index_images("satellite")
    assert index_gps is not None
    corpus = [Item(id=f"{GPS_CORPUS}/index/{i}", text=gps_text(*p)) for i, p in zip(index_ids, index_gps)]
    corpus += [Item(id=f"{GPS_CORPUS}/query/{lid}", text=gps_text(*p)) for lid, p in landmarks.items()]
    gps = [*index_gps, *landmarks.values()]
    queries = []
    for lid, item, source in _query_items(rel, qmod, text_sampling):
        if lid not in landmarks:
            raise DatasetError(f"landmark {lid} has no GPS in mml_query.csv", file=rel.root / source,
                               record=item.id, field="landmark_id")
        lat, lon = landmarks[lid]
        queries.append(Query(id=item.id, item=item, relevant_ids=(f"{GPS_CORPUS}/query/{lid}",),
                             meta={"landmark_id": lid, "lat": lat, "lon": lon, "source": source}))
    if check:
        _check([os.fspath(q.item.image) for q in queries if isinstance(q.item.image, Path)], rel.root,
               direction)
    n_index = len(index_ids)
    notes = {
        "source": "Oshkr/mml-codebase evaluate_geolocalization.py, evaluate_text.py (T2C), geoutils.py",
        "geo_scorer": "cirbench.core.geo:geo_hits on the run's pred_lat/pred_lon (GPS of the top-1 item) and "
                      "lat/lon (the query's)",
        "geo_metrics": ",".join(geo_metric_name(t) for t in GEO_THRESHOLDS_KM),
        "prediction": "the GPS of the top-1 gallery point; haversine distance, R = 6,371 km, "
                      "distance <= threshold",
        "gallery": f"{n_index} index satellite coordinates (mml_index_satellite.csv) + {len(landmarks)} "
                   "query landmark coordinates (mml_query.csv), as mml-codebase's GPS gallery; each point "
                   "is an item of modality 'gps' (text gps:<lat>,<lon>), encoded by the model's location "
                   "encoder",
        "recall": "R@K: the query landmark's own point in the top K",
    }
    if qmod == "text":
        notes["text_sampling"] = text_sampling
    return Task(
        metadata=dataclasses.replace(_metadata(direction, gps_gallery=True), corpus_modality=GPS_CORPUS),
        split="query",
        queries=queries, corpus=corpus,
        protocol=Protocol(name=protocol, metrics=GEO_METRICS, main_metric="R@1", top_k=10,
                          ap_normaliser="|G|", exclude_reference=False,
                          gallery=f"{n_index} index + {len(landmarks)} query-landmark GPS points",
                          notes=notes),
        revision=rel.revision(), gps=np.asarray(gps, dtype=np.float64).reshape(-1, 2),
        run_columns=gps_columns,
        extra={"dataset_dir": os.fspath(rel.root), "direction": direction, "n_index": n_index,
               "text_sampling": text_sampling if qmod == "text" else None},
    )


def _geo_protocol(name: str, qmod: str, n_index: int, n_tiles: int, tiles_csv: str, text_sampling: str,
                  single_tile: int = 0) -> Protocol:
    geo_names = ",".join(geo_metric_name(t) for t in GEO_THRESHOLDS_KM)
    notes = {
        "source": "Oshkr/mml-codebase evaluate_geolocalization.py, evaluate_text.py (T2C), geoutils.py",
        "geo_scorer": "cirbench.core.geo:geo_hits on the run's pred_lat/pred_lon (GPS of the top-1 item) and "
                      "lat/lon (the query's)",
        "geo_metrics": geo_names,
        "prediction": "the GPS of the top-1 gallery item; haversine distance, R = 6,371 km, "
                      "distance <= threshold",
        "gallery": f"{n_index} index satellite tiles (their lat/lon) + {n_tiles} tiles of the query "
                   f"landmarks from {tiles_csv} (the landmark's lat/lon): the same coordinates as "
                   "mml-codebase's GPS gallery (index satellite + query landmark coordinates), represented "
                   "by images because cirbench models have no location encoder",
        "recall": "R@K: a tile of the query's own landmark in the top K",
    }
    if qmod == "satellite":
        notes["exclusion"] = ("the query's own tile is excluded when its landmark has other tiles (they "
                              "keep the landmark's GPS point in the gallery); a landmark with a single "
                              f"tile keeps it, so its point stays reachable as in mml-codebase "
                              f"({single_tile} such queries; R@K is undefined for them, since their only "
                              "tile is the query itself)")
    if qmod == "text":
        notes["text_sampling"] = text_sampling
    return Protocol(
        name=name, metrics=GEO_METRICS,
        main_metric="R@1", top_k=10, ap_normaliser="|G|",
        exclude_reference=False, gallery=f"{n_index} index + {n_tiles} query-landmark satellite tiles",
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------------
# Metrics of the released evaluator
# ----------------------------------------------------------------------------------------------------


def _junk_mask(junk: np.ndarray | None, ranked: np.ndarray) -> np.ndarray:
    valid = ranked >= 0
    if junk is None:
        return np.zeros(ranked.shape, dtype=bool)
    junk = np.asarray(junk, dtype=bool)
    return valid & junk[np.where(valid, ranked, 0)]


def market1501_map(ranked: np.ndarray, relevant: Sequence[np.ndarray], junk: np.ndarray | None = None,
                   topk: int = MAP_TOPK) -> np.ndarray:
    """(Q,) Market-1501 AP on the top `topk` of each ranking, junk removed *after* the cut.

    `ranked` (Q, K>=topk) holds corpus positions (-1 pads a gallery smaller than K); `junk` is an (N,) bool
    mask over positions. With i the 0-based hit counter and r the hit's 0-based row in the junk-free list,
    each hit adds ((i / r if r else 1) + (i + 1) / (r + 1)) / 2 / |G|, |G| = all of the query's positives
    (mml-codebase `_average_precision`). Queries without positives get NaN.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be (queries, depth), got shape {ranked.shape}")
    if ranked.shape[1] < topk and not (ranked.shape[1] and (ranked[:, -1] < 0).all()):
        raise ValueError(f"mAP@{topk} needs the top {topk} of each ranking, the run has depth "
                         f"{ranked.shape[1]}")
    r = ranked[:, :topk]
    keep = (r >= 0) & ~_junk_mask(junk, r)
    hits = hit_matrix(r, relevant) & keep
    row = np.cumsum(keep, axis=1) - 1
    count = np.cumsum(hits, axis=1) - 1
    q_idx, j_idx = np.nonzero(hits)
    rows = row[q_idx, j_idx].astype(np.float64)
    i = count[q_idx, j_idx].astype(np.float64)
    precision = (i + 1) / (rows + 1)
    old = np.divide(i, rows, out=np.ones_like(i), where=rows != 0)
    n_good = np.array([np.unique(np.asarray(g, dtype=np.int64)).size for g in relevant], dtype=np.float64)
    contrib = (old + precision) / 2 / np.maximum(n_good[q_idx], 1)
    ap = np.bincount(q_idx, weights=contrib, minlength=r.shape[0]).astype(np.float64)
    ap[n_good == 0] = np.nan
    return ap


def junk_free_recall(ranked: np.ndarray, relevant: Sequence[np.ndarray], junk: np.ndarray | None, k: int
                     ) -> np.ndarray:
    """(Q,) R@k after dropping junk from a full ranking (mml-codebase `_recall_at_k`).

    Exact when the junk-free prefix of the run reaches k items or a positive; NaN where the run is too
    shallow to tell (use the subset ranking instead: protocol paper-code sets Query.candidate_ids).
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    keep = (ranked >= 0) & ~_junk_mask(junk, ranked)
    hits = hit_matrix(ranked, relevant) & keep
    pos = np.cumsum(keep, axis=1)
    first = np.where(hits.any(axis=1), pos[np.arange(len(pos)), hits.argmax(axis=1)], 0)
    complete = (ranked < 0).any(axis=1)  # the run lists the whole gallery
    out = np.where(first > 0, (first <= k).astype(np.float64), np.nan)
    decided = (first == 0) & ((keep.sum(axis=1) >= k) | complete)
    out[decided] = 0.0
    out[np.array([np.asarray(g).size == 0 for g in relevant])] = np.nan
    return out


def per_query_values(table: Any, protocol: Any, metrics: Sequence[str] | None = None, *,
                     junk_prefix: str | None = None) -> dict[str, np.ndarray]:
    """Per-query values of an MMLandmarks retrieval protocol from a run table (cirbench.core.run columns).

    R@K / R_s@K / MedR as the generic scorer computes them (R_s@K on `subset_ranked_ids` = the paper's
    junk-free R@K); mAP@K by `market1501_map`, with junk = ids starting with `junk_prefix` (the scorer's
    parameter under paper-code). Falls back to `junk_free_recall` when the run has no subset ranking.

    A ranked list shorter than the protocol's `top_k` (or a subset list shorter than the deepest R_s@K)
    is the whole (sub-)gallery, so it is padded rather than refused as too shallow.
    """
    names = list(metrics or protocol["metrics"])
    prefix = junk_prefix
    ranked_l = table.column("ranked_ids").to_pylist()
    relevant_l = table.column("relevant_ids").to_pylist()
    ids: dict[str, int] = {}
    ranked = _encode(ranked_l, ids, int(protocol.get("top_k") or 0))
    relevant = [np.array([ids.setdefault(c, len(ids)) for c in rel], dtype=np.int64) for rel in relevant_l]
    subset = None
    if "subset_ranked_ids" in table.column_names:
        sub_k = max([parse_metric(n).k or 0 for n in names if parse_metric(n).kind == "recall_subset"],
                    default=0)
        subset = _encode(table.column("subset_ranked_ids").to_pylist(), ids, sub_k)
    first = (np.asarray(table.column("first_relevant_rank").to_pylist(), dtype=np.int64)
             if "first_relevant_rank" in table.column_names else None)
    junk = None
    if prefix:
        junk = np.zeros(len(ids), dtype=bool)
        for cid, p in ids.items():
            junk[p] = cid.startswith(prefix)
    out: dict[str, np.ndarray] = {}
    generic = []
    for name in names:
        spec = parse_metric(name)
        if spec.kind == "map":
            assert spec.k is not None
            out[spec.name] = market1501_map(ranked, relevant, junk, spec.k)
        elif spec.kind == "recall_subset" and subset is None:
            assert spec.k is not None
            out[spec.name] = junk_free_recall(ranked, relevant, junk, spec.k)
        else:
            generic.append(name)
    if generic:
        out.update(per_query_metrics(generic, ranked, relevant, subset_ranked=subset, first_rank=first))
    return {parse_metric(n).name: out[parse_metric(n).name] for n in names}


MARKET1501 = register_scorer("mmlandmarks-market1501", per_query_values)
"""mml-codebase's scorer (Market-1501 mAP, junk removal); `junk_prefix` is set under paper-code."""


def _encode(lists: list[list[str]], ids: dict[str, int], min_depth: int = 0) -> np.ndarray:
    """Id lists as a position matrix, -1 padded to at least `min_depth` columns (the run's depth: a
    shorter list is a complete ranking of a smaller gallery)."""
    depth = max(max((len(r) for r in lists), default=0), min_depth)
    out = np.full((len(lists), max(depth, 1)), -1, dtype=np.int64)
    for q, row in enumerate(lists):
        for j, cid in enumerate(row):
            out[q, j] = ids.setdefault(cid, len(ids))
    return out


# ----------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------


def _loader(direction: str) -> Callable[..., Task]:
    def load_direction(data_dir: Path | None, split: str, protocol: str, **options: Any) -> Task:
        return load(direction, data_dir, split, protocol, **options)
    load_direction.__doc__ = f"Load mmlandmarks-{direction} (see cirbench.tasks.mmlandmarks)."
    return load_direction


_SIZES = {
    "g2s": "18,688 ground queries / 99,539 index + 1,000 query satellite tiles",
    "s2g": "1,000 satellite queries / 714,554 index + 18,688 query ground images",
    "t2s": "1,000 text queries / 99,539 index + 1,000 query satellite tiles",
    "t2g": "1,000 text queries / 714,554 index + 18,688 query ground images",
    "g2c": "18,688 ground queries / 99,539 index + ~10.6k query-landmark satellite tiles (GPS)",
    "s2c": "1,000 satellite queries / 99,539 index + ~10.6k query-landmark satellite tiles (GPS)",
    "t2c": "1,000 text queries / 99,539 index + ~10.6k query-landmark satellite tiles (GPS)",
}

SPECS = {}
for _d in (*RETRIEVAL, *GEO):
    _geo_task = _d in GEO
    SPECS[_d] = register_task(TaskSpec(
        metadata=_metadata(_d), load=_loader(_d), splits=SPLITS, default_split="query",
        protocols=GEO_PROTOCOLS if _geo_task else RETRIEVAL_PROTOCOLS, layout=LAYOUT,
        metrics=GEO_METRICS if _geo_task else retrieval_metrics(RETRIEVAL_PROTOCOLS[0]),
        protocol_metrics={} if _geo_task else {p: retrieval_metrics(p) for p in RETRIEVAL_PROTOCOLS},
        size=_SIZES[_d], submission=None,
        options=OPTIONS if _d.startswith("t") else {"check_images": OPTIONS["check_images"]},
        family="mmlandmarks",
    ))
