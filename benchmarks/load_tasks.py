"""How long loading CIRR, CIRCO and FashionIQ takes at their released sizes, and what it costs in memory.

Writes annotation files of the released sizes and formats into a temporary directory (benchmarks.md §1.3,
§2.1-2.2, §3.1: CIRCO's 123,403 gallery entries, CIRR's 4,181 val pairs over 2,297 images, ...), with
empty placeholder image files so the existence check scans real directories, then times:

  load       parse the JSON, scan the image folders once, build Items and Queries;
  setup      Task.validate() + the per-query exclusion lists (what `get_task` and the search do next);
  submit     write the test-server file(s) from a fake top-50 run (CIRR test1, CIRCO test).

    python benchmarks/load_tasks.py                 # placeholders on disk, existence checked
    python benchmarks/load_tasks.py --no-images     # no image files; loads with check_images=false
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Task, query_exclusions
from cirbench.submission import validate_submission
from cirbench.tasks import circo, cirr, fashioniq

RNG = np.random.default_rng(0)

CIRR_SIZES = {"val": (4181, 2297, 503), "test1": (4148, 2315, 503), "train": (28225, 16939, 4000)}
"""split -> (pairs, images, img_sets); train's img_set count is not in benchmarks.md (a guess)."""
CIRCO_GALLERY, CIRCO_QUERIES = 123_403, {"val": 220, "test": 800}
FIQ_VAL = {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}


def _touch(paths: list[Path]) -> None:
    for d in {p.parent for p in paths}:
        d.mkdir(parents=True, exist_ok=True)
    for p in paths:
        p.touch()


# -- generators in the released formats -----------------------------------------------------------------


def make_cirr(root: Path, images: bool) -> None:
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    prefix = {"val": "dev", "test1": "test1", "train": "train"}
    for split, (n_pairs, n_images, n_sets) in CIRR_SIZES.items():
        p = prefix[split]
        names = [f"{p}-{i // 4}-{i % 4}-img{i % 2}" for i in range(n_images)]
        rel = {n: (f"./train/{i % 100}/{n}.png" if split == "train" else f"./{p}/{n}.png")
               for i, n in enumerate(names)}
        sets = [list(RNG.choice(names, 6, replace=False)) for _ in range(n_sets)]
        records = []
        for k in range(n_pairs):
            members = sets[k % n_sets]
            a, b = RNG.choice(6, 2, replace=False)
            rec: dict[str, Any] = {"pairid": 10000 + k, "reference": members[a]}
            if split != "test1":
                rec |= {"target_hard": members[b], "target_soft": {members[b]: 1.0}}
            rec |= {"caption": "show three bottles of soft drink",
                    "img_set": {"id": k % n_sets, "members": members, "reference_rank": int(a)}}
            if split != "test1":
                rec["img_set"]["target_rank"] = int(b)
            records.append(rec)
        (root / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(records))
        (root / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(rel, indent=4))
        if images:
            _touch([root / "img_raw" / r for r in rel.values()])


def make_circo(root: Path, images: bool) -> None:
    ids = [int(i) for i in RNG.choice(np.arange(1, 600_000), CIRCO_GALLERY, replace=False)]
    coco = root / "COCO2017_unlabeled"
    (coco / "annotations").mkdir(parents=True)
    info = {"info": {"description": "COCO 2017 Dataset", "year": 2017}, "licenses": [],
            "images": [{"license": 4, "file_name": f"{i:012d}.jpg",
                        "coco_url": f"http://images.cocodataset.org/unlabeled2017/{i:012d}.jpg",
                        "height": 480, "width": 640, "date_captured": "2013-11-14 16:28:13", "id": i}
                       for i in ids]}
    (coco / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps(info))
    (root / "annotations").mkdir()
    for split, n in CIRCO_QUERIES.items():
        recs = []
        for q in range(n):
            rec: dict[str, Any] = {"reference_img_id": ids[q]}
            gts = [ids[1000 + 25 * q + j] for j in range(1 + q % 14)]
            if split == "val":
                rec["target_img_id"] = gts[0]
            rec |= {"relative_caption": "is held by a little girl on a chair",
                    "shared_concept": "a teddy bear"}
            if split == "val":
                rec |= {"gt_img_ids": gts, "semantic_aspects": ["addition", "viewpoint"][: 1 + q % 2]}
            rec["id"] = q
            recs.append(rec)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(recs, indent=4))
    if images:
        (coco / "unlabeled2017").mkdir()
        _touch([coco / "unlabeled2017" / f"{i:012d}.jpg" for i in ids])


def make_fiq(root: Path, images: bool) -> None:
    for d in ("captions", "image_splits", "images"):
        (root / d).mkdir(parents=True)
    files = []
    for c, (n_q, n_img) in FIQ_VAL.items():
        asins = [f"B0{c[0].upper()}{i:07d}" for i in range(n_img)]
        recs = [{"target": asins[(7 * k + 3) % n_img], "candidate": asins[k % n_img],
                 "captions": ["is solid black with no sleeves", "is black with straps."]} for k in range(n_q)]
        (root / "captions" / f"cap.{c}.val.json").write_text(json.dumps(recs, indent=4))
        (root / "image_splits" / f"split.{c}.val.json").write_text(json.dumps(asins))
        files += [root / "images" / f"{a}.{'png' if i % 2 else 'jpg'}" for i, a in enumerate(asins)]
    if images:
        _touch(files)


# -- timing -----------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process): CPU time is what a busy machine distorts least."""
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _fake_run(task: Task) -> Run:
    """A top-50 run that respects exclusions and subsets, without any scores worth the name."""
    n = len(task.corpus)
    excl = query_exclusions(task)
    idx = np.empty((len(task.queries), 50), dtype=np.int64)
    sub = np.full((len(task.queries), 3), -1, dtype=np.int64)
    for r, (q, ex) in enumerate(zip(task.queries, excl, strict=True)):
        row = [i for i in RNG.choice(n, 60, replace=False) if i not in ex][:50]
        idx[r] = row
        cand = [task.corpus_positions[c] for c in q.candidate_ids or ()][:3]
        sub[r, : len(cand)] = cand
    return Run([q.id for q in task.queries], [it.id for it in task.corpus], idx, np.zeros(idx.shape),
               subset_indices=sub, subset_scores=np.zeros(sub.shape))


def bench_case(root: Path, name: str, loader: Callable[..., Task], sub: str, split: str, protocol: str,
               check: str) -> None:
    """Time one load, its setup and (test splits) its submission file; print one table row."""
    task, t_load, c_load = _timed(lambda: loader(root / sub, split, protocol, check_images=check))
    _, t_setup, c_setup = _timed(lambda: (task.validate(), query_exclusions(task)))
    t_sub = c_sub = float("nan")
    spec = {"cirr": cirr.SPEC, "circo": circo.SPEC}.get(name)
    notes = []
    if spec is not None and spec.submission is not None and not task.has_labels:
        writer = spec.submission
        run = _fake_run(task)
        files, t_sub, c_sub = _timed(lambda: writer(task, run, root / "out" / name))
        for f in files:
            ok = validate_submission(f, name, data_dir=root / sub) == []
            notes.append(f"    {f.name}: {f.stat().st_size / 1e6:.2f} MB, "
                         f"{'passes' if ok else 'FAILS'} validate_submission against the split")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name:<10}{split:<6}{protocol:<35}{len(task.queries):>7}{len(task.corpus):>8}"
          f"{t_load:>8.2f} /{c_load:>5.2f}{t_setup:>8.2f} /{c_setup:>5.2f}{t_sub:>9.2f} /{c_sub:>5.2f}"
          f"{rss:>8.0f}")
    for line in notes:
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-images", action="store_true", help="write no placeholder image files")
    args = ap.parse_args()
    check = "false" if args.no_images else "true"

    with tempfile.TemporaryDirectory(prefix="cirbench-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_cirr(root / "cirr", not args.no_images)
        make_circo(root / "circo", not args.no_images)
        make_fiq(root / "fashioniq", not args.no_images)
        print(f"generated annotation files (+ placeholders: {not args.no_images}) in "
              f"{time.perf_counter() - t0:.1f} s")
        ann_mb = sum(f.stat().st_size for f in root.rglob("*.json")) / 1e6
        print(f"annotation JSON on disk: {ann_mb:.1f} MB\n")

        cases: list[tuple[str, Callable[..., Task], str, str, str]] = [
            ("cirr", cirr.load, "cirr", "val", "official"),
            ("cirr", cirr.load, "cirr", "test1", "official"),
            ("cirr", cirr.load, "cirr", "train", "official"),
            ("circo", circo.load, "circo", "val", "official"),
            ("circo", circo.load, "circo", "test", "shared-concept+reference-excluded"),
            ("fashioniq", fashioniq.load, "fashioniq", "val", "official"),
            ("fashioniq", fashioniq.load, "fashioniq", "val", "union-val+c2-and-c1"),
        ]
        header = (f"{'task':<10}{'split':<6}{'protocol':<35}{'queries':>7}{'corpus':>8}"
                  f"{'load wall/cpu':>15}{'setup wall/cpu':>15}{'submit wall/cpu':>16}{'RSS MB':>8}")
        print(header)
        print("-" * len(header))
        for name, loader, sub, split, protocol in cases:
            bench_case(root, name, loader, sub, split, protocol, check)
        load = os.getloadavg()[0]
        print(f"\n{os.cpu_count()} CPUs, load average {load:.1f} at the end; one run per row; RSS is the "
              "process peak so far")


if __name__ == "__main__":
    main()
