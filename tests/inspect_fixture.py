"""A small task with hard negatives and two runs whose per-query ranks are known by hand (for inspect tests).

8 images c0..c7 (one colour each), 12 queries: query i has reference c(i % 8), target c((i + 1) % 8) and hard
negative c((i + 2) % 8); categories Even / Odd by i, subcategories S(i % 3). The protocol keeps the reference.
Vectors are one-hot, so every other image scores 0 and ties go by corpus position (cirbench's tie rule):
- "good" points each query at its target: rank 1 everywhere.
- "mixed" points even queries at the target (rank 1) and odd ones at their reference, which then comes
  first; the target's rank is 2 + its position among the other seven images: q1 3, q3 5, q5 7, q7 2, q9 3,
  q11 5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import cirbench
from cirbench.evaluation import EvalOptions

from .conftest import png

N_IMAGES, N_QUERIES = 8, 12
HOSTILE = '<img src=x onerror="alert(1)"> & "quotes"'
MIXED_RANKS = {"q1": 3, "q3": 5, "q5": 7, "q7": 2, "q9": 3, "q11": 5}
QUIET = EvalOptions(progress=False, n_bootstrap=50)


@dataclass
class Runs:
    data: Path
    good: Path
    mixed: Path


def make_dataset(root: Path) -> Path:
    from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
    from cirbench.core.types import Protocol

    colours = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230)]
    corpus = [ImageRecord(id=f"c{i}", image=png(colours[i], size=24)) for i in range(N_IMAGES)]
    queries = [QueryRecord(id=f"q{i}", reference_id=f"c{i % N_IMAGES}",
                           text=HOSTILE if i == 4 else f"turn it into colour {(i + 1) % N_IMAGES}",
                           relevant_ids=[f"c{(i + 1) % N_IMAGES}"],
                           hard_negative_ids=[f"c{(i + 2) % N_IMAGES}"],
                           category="Even" if i % 2 == 0 else "Odd", subcategory=f"S{i % 3}")
               for i in range(N_QUERIES)]
    protocol = Protocol(metrics=("R@1", "R@5"), main_metric="R@1", top_k=5, exclude_reference=False)
    return write_dataset(root / "colours", {"test": SplitData(queries=queries, corpus=corpus)},
                         name="colours", protocol=protocol)


def vectors(path: Path, odd_offset: int) -> Path:
    eye = np.eye(N_IMAGES)
    rows = [(f"q{i}", "query", list(eye[(i + (1 if i % 2 == 0 else odd_offset)) % N_IMAGES]))
            for i in range(N_QUERIES)]
    rows += [(f"c{i}", "document", list(eye[i])) for i in range(N_IMAGES)]
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), path)
    return path


def make_runs(root: Path) -> Runs:
    data = make_dataset(root)
    out = {}
    for name, offset in (("good", 1), ("mixed", 0)):
        vec = vectors(root / f"{name}.parquet", offset)
        cirbench.evaluate(f"precomputed:{vec}", str(data), output=root / "results" / name, options=QUIET)
        out[name] = root / "results" / name
    return Runs(data, out["good"], out["mixed"])
