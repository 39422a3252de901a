"""WebVid-CoVR (Ventura et al., AAAI 2024): composed video retrieval over WebVid clips.

As lucas-ventura/CoVR evaluates it (`src/test/blip/webvid_covr.py`, `src/data/webvid_covr.py`): the query is
the reference video's middle frame plus the edit text; the gallery is the set of the split's target videos;
a target is pooled from 15 frames; the query's own reference video is never returned. R@1/5/10/50, meanR3 =
mean(R@1, R@5, R@10), meanR4 = mean of all four.

Frames are extracted once to image files (`cirbench.core.video.extract_frames`); each target is one corpus
Item (its middle sampled frame) plus all its frame Items in `Task.corpus_frames` for corpus-side
averaging (`cirbench.core.video.expand_corpus`).
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cirbench.core.options import as_choice, as_int
from cirbench.core.paths import Root
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.tasks._files import CsvFile, check_options, read_csv, require_data_dir
from cirbench.tasks.registry import TaskSpec, register_task

NAME = "webvid-covr"
SPLITS = ("test", "val")
CSV_NAMES = {"test": "webvid8m-covr_test.csv", "val": "webvid8m-covr_val.csv"}
PROTOCOLS = ("official", "paper-code")
REQUIRED_COLUMNS = ("pth1", "pth2", "edit")
N_FRAMES = 15
POOLS = ("mean", "csv-scores")
FRAME_FORMATS = ("jpg", "png")
SCORE_TEMPERATURE = 0.1
"""`emb_pool: query` weights a target's frames by softmax(scores / 0.1) (src/data/webvid_covr.py)."""
METRICS = ("R@1", "R@5", "R@10", "R@50", "meanR3", "meanR4")
"""CoVR's eval_recall: R@1/5/10/50, meanR3 = mean(R@1, R@5, R@10), meanR4 = mean of all four (in every
result: cirbench.core.metrics computes meanR3/4 per query from the same hits)."""
OPTIONS = {
    "video_dir": "folder holding <pth>.mp4 (default: <data-dir>/WebVid/8M/train, else <data-dir>/videos)",
    "frames_dir": "where extracted frames are cached (default $CIRBENCH_CACHE/frames/webvid-covr/...)",
    "n_frames": f"frames pooled per target (default {N_FRAMES})",
    "target_pool": "mean (default) or csv-scores (the release's emb_pool=query: softmax(scores/0.1) over "
                   "the CSV's per-frame BLIP scores; falls back to the mean where scores are absent)",
    "frame_format": "jpg (default, quality 95) or png",
    "workers": "threads decoding videos (default 4)",
}

LAYOUT = """\
  WebVid-CoVR (annotations: huggingface.co/datasets/lucas-ventura/WebVid-CoVR; videos: WebVid-8M via
  lucas-ventura/CoVR tools/scripts/download_covr.py):
    <data-dir>/webvid8m-covr_{test,val}.csv   (or <data-dir>/annotation/webvid-covr/...)
        columns pth1, pth2, edit (+ txt1, txt2, scores)
    <data-dir>/WebVid/8M/train/<pth>.mp4      (pth = "<folder>/<video id>"), or <data-dir>/videos/<pth>.mp4
  --task-option video_dir=DIR points at the video folder."""

METADATA = TaskMetadata(
    name=NAME,
    description="Composed video retrieval: a reference video's middle frame plus an edit text retrieves "
                "the target video among all targets of the split.",
    source="https://github.com/lucas-ventura/CoVR; annotations "
           "huggingface.co/datasets/lucas-ventura/WebVid-CoVR",
    license="unknown: annotation licence not recorded in benchmarks.md; videos under WebVid terms",
    citation="""@inproceedings{ventura2024covr,
  title     = {CoVR},
  author    = {Ventura and others},
  booktitle = {AAAI},
  year      = {2024},
  note      = {arXiv:2308.14746; extended in TPAMI 2024; full title and author list unverified}
}""",
    query_modality="image+text",
    corpus_modality="image",
    pitfalls=(
        "A target is pooled from 15 frames; an evaluator that ignores Task.corpus_frames scores "
        "one frame per target.",
        "The released evaluator pairs video ids sorted by pth2 with features in file order, so its "
        "self-exclusion is right only for a CSV sorted by pth2 (protocol paper-code reproduces it).",
        "The release pools target frames with BLIP text-frame scores from the CSV (emb_pool=query): "
        "model-specific; cirbench defaults to the plain mean.",
        "CoVR lower-cases the edit text and strips punctuation (pre_caption) for BLIP; cirbench passes the "
        "text as written.",
    ),
)


def _annotation(root: Path, split: str) -> Path:
    name = CSV_NAMES[split]
    for cand in (root / name, root / "annotation" / "webvid-covr" / name):
        if cand.is_file():
            return cand
    raise DatasetError(f"annotation file {name} is missing. Expected layout:\n{LAYOUT}", file=root / name)


def _video_dir(root: Path, option: str | None) -> Path:
    if option is not None:
        return Path(option)
    for cand in (root / "WebVid" / "8M" / "train", root / "videos"):
        if cand.is_dir():
            return cand
    return root


def _frames_dir(option: str | None, video_dir: Path) -> Path:
    if option is not None:
        return Path(option)
    from cirbench.core.cache import default_cache_dir

    key = hashlib.sha1(os.fspath(video_dir.resolve()).encode()).hexdigest()[:12]
    return default_cache_dir() / "frames" / NAME / key


def _scores(value: str | None, f: CsvFile, n: int) -> list[float] | None:
    """The CSV's per-frame scores ("[0.31, 0.29, ...]"), None when absent or empty."""
    if value is None or value.strip() in ("", "[]"):
        return None
    try:
        parsed = ast.literal_eval(value.strip())
        scores = [float(x) for x in parsed]
    except (ValueError, SyntaxError, TypeError):
        raise DatasetError(f"scores is not a list of numbers: {value[:60]!r}", file=f.path,
                           record=f.record(n), field="scores") from None
    return scores or None


def _softmax(xs: list[float], temperature: float) -> list[float]:
    m = max(xs)
    e = [math.exp((x - m) / temperature) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def load(data_dir: Path | None, split: str, protocol: str = "official", **options: Any) -> Task:
    """Read the annotation CSV, decode the needed frames once (cached), and build the Task."""
    from cirbench.core.video import extract_frames

    check_options(options, OPTIONS, NAME)
    if split not in SPLITS:
        raise ValueError(f"WebVid-CoVR has no split {split!r}; splits: {list(SPLITS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"WebVid-CoVR has no protocol {protocol!r}; protocols: {list(PROTOCOLS)}")
    n_frames = as_int(options.get("n_frames", N_FRAMES), "n_frames", low=1)
    pool = as_choice(options.get("target_pool", "mean"), "target_pool", POOLS)
    fmt = as_choice(options.get("frame_format", "jpg"), "frame_format", FRAME_FORMATS)
    workers = as_int(options.get("workers", 4), "workers", low=1)
    root = require_data_dir(data_dir, NAME, LAYOUT)
    f = read_csv(_annotation(root, split), REQUIRED_COLUMNS, LAYOUT)
    if not f.rows:
        raise DatasetError("the annotation file has no rows", file=f.path)
    video_dir = _video_dir(root, options.get("video_dir"))
    frames_dir = _frames_dir(options.get("frames_dir"), video_dir)

    rows = []
    for n, row in enumerate(f.rows):
        vals = {}
        for col in REQUIRED_COLUMNS:
            v = row.get(col)
            if v is None or v.strip() == "":
                raise DatasetError("empty value", file=f.path, record=f.record(n), field=col)
            vals[col] = v.strip()
        vals["txt1"], vals["txt2"] = (row.get("txt1") or "").strip(), (row.get("txt2") or "").strip()
        rows.append((n, vals, _scores(row.get("scores"), f, n) if pool == "csv-scores" else None))

    def record(n: int) -> str:
        return f"{f.path.name} {f.record(n)}"

    # a pth names a video below video_dir and a frame folder below frames_dir: it may leave neither
    videos = Root(video_dir, what="the video folder")
    frame_root = Root(frames_dir, what="the frames folder")
    jobs: dict[tuple[str, str], tuple[Path, Path, str]] = {}
    for n, vals, _ in rows:
        for pth, method in ((vals["pth1"], "middle"), (vals["pth2"], "sample")):
            col = "pth1" if method == "middle" else "pth2"
            src = videos.join(f"{pth}.mp4", file=f.path, record=f.record(n), field=col)
            out = frame_root.join(pth, file=f.path, record=f.record(n), field=col)
            if not src.is_file():
                raise DatasetError(f"video {pth}.mp4 is missing under {video_dir}. Expected layout:\n"
                                   f"{LAYOUT}", file=src, record=record(n), field=col)
            jobs.setdefault((pth, method), (src, out, record(n)))

    def run(key: tuple[str, str]) -> list[Path]:
        src, out, rec = jobs[key]
        return extract_frames(src, out, method=key[1], n=n_frames, fmt=fmt, record=rec)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cirbench-video") as ex:
        results = dict(zip(jobs, ex.map(run, list(jobs)), strict=True))

    corpus: list[Item] = []
    corpus_frames: dict[str, list[Item]] = {}
    weights: dict[str, list[float]] = {}
    n_weighted = 0
    for _, vals, scores in rows:
        pth2 = vals["pth2"]
        if pth2 in corpus_frames:
            continue
        paths = results[(pth2, "sample")]
        frames = [Item(id=f"{pth2}#frame{j}", image=p) for j, p in enumerate(paths)]
        corpus_frames[pth2] = frames
        corpus.append(Item(id=pth2, image=paths[len(paths) // 2], caption=vals["txt2"] or None))
        if scores is not None and len(scores) == len(paths):
            weights[pth2] = _softmax(scores, SCORE_TEMPERATURE)
            n_weighted += 1
    target_ids = set(corpus_frames)
    exclusions = _paper_code_exclusions(rows, f) if protocol == "paper-code" else None

    queries = []
    for i, (n, vals, _) in enumerate(rows):
        qid = str(n)
        (middle,) = results[(vals["pth1"], "middle")]
        queries.append(Query(
            id=qid, item=Item(id=qid, image=middle, text=vals["edit"]), relevant_ids=(vals["pth2"],),
            reference_id=vals["pth1"],
            exclude_ids=tuple(x for x in (exclusions[i] if exclusions is not None else ())
                              if x in target_ids),
            meta={"pth1": vals["pth1"], "pth2": vals["pth2"], "txt1": vals["txt1"], "txt2": vals["txt2"]},
        ))
    return Task(
        metadata=METADATA, split=split, queries=queries, corpus=corpus,
        protocol=_protocol(protocol, len(corpus), n_frames, pool, n_weighted),
        revision=f"sha1:{f.digest[:16]}", has_labels=True,
        corpus_frames=corpus_frames, corpus_frame_weights=weights if pool == "csv-scores" else None,
        extra={"dataset_dir": os.fspath(root), "video_dir": os.fspath(video_dir),
               "frames_dir": os.fspath(frames_dir), "n_frames": n_frames},
    )


def _paper_code_exclusions(rows: list[tuple[int, dict[str, str], Any]], f: CsvFile) -> list[list[str]]:
    """Per query (file order), the targets the released evaluator masks (benchmarks.md §8 item 8).

    Its ids come from the rows sorted by pth2 while the features stay in file order: query i masks gallery
    position j when sorted_pth1[i] == sorted_pth2[j], and gallery position j holds file row j's target.
    """
    pth1 = [v["pth1"] for _, v, _ in rows]
    pth2 = [v["pth2"] for _, v, _ in rows]
    if len(set(pth2)) != len(pth2):
        raise DatasetError("protocol paper-code needs one row per target video (unique pth2), as in the "
                           "test CSV", file=f.path, field="pth2")
    order = sorted(range(len(rows)), key=lambda i: pth2[i])
    sorted_pth1 = [pth1[i] for i in order]
    pos_in_sorted = {pth2[i]: j for j, i in enumerate(order)}
    out = []
    for i in range(len(rows)):
        j = pos_in_sorted.get(sorted_pth1[i])
        out.append([pth2[j]] if j is not None else [])
    return out


def _protocol(name: str, n_targets: int, n_frames: int, pool: str, n_weighted: int) -> Protocol:
    paper = name == "paper-code"
    notes = {
        "source": "lucas-ventura/CoVR src/test/blip/webvid_covr.py::eval_recall, src/data/webvid_covr.py",
        "query": "middle frame (index n_frames // 2) of the reference video + the edit text",
        "target": f"{n_frames} frames at the middle of equal segments (CoVR sample_frames); the corpus "
                  "vector is their "
                  + ("mean" if pool == "mean" else
                     f"softmax(scores / {SCORE_TEMPERATURE})-weighted mean ({n_weighted} of {n_targets} "
                     "targets had usable CSV scores; the rest use the mean)")
                  + ", re-normalised (Task.corpus_frames / Task.corpus_frame_weights)",
        "gallery": "every distinct target video (pth2) of the split",
        "exclusion": ("the released quirk: ids sorted by pth2 paired with features in file order "
                      "(Query.exclude_ids); equals the correct exclusion only for a CSV sorted by pth2"
                      if paper else "a target whose video id equals the query's reference (pth1) is "
                      "removed from the ranking"),
        "meanR3": "mean(R@1, R@5, R@10)",
        "meanR4": "mean(R@1, R@5, R@10, R@50)",
        "text": "edit as written (CoVR applies BLIP's pre_caption: lower case, punctuation removed, "
                "30 words)",
    }
    return Protocol(
        name=name, metrics=METRICS, main_metric="R@1", top_k=50, exclude_reference=not paper,
        gallery=f"{n_targets} target videos", notes=notes,
    )


SPEC = register_task(TaskSpec(
    metadata=METADATA, load=load, splits=SPLITS, default_split="test", protocols=PROTOCOLS, layout=LAYOUT,
    metrics=METRICS,
    size="test ~2.5K manually verified triplets [unverified; count the CSV rows]; val from WebVid-8M",
    submission=None, options=OPTIONS,
))
