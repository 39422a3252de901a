"""A Run: the top-K corpus ids and scores per query, the thing metrics and submission files consume.

`run.parquet` stores, per query, everything needed to recompute every metric offline: the ranked ids and
scores, the subset ranking (CIRR's Recall_subset), the rank of the first relevant item in the full ranking,
the relevant ids, the category and subcategory, and the task's own columns (`Task.run_columns`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirbench.core.io import atomic_write
from cirbench.core.types import DatasetError, Task


@dataclass
class Run:
    query_ids: list[str]
    corpus_ids: list[str]
    indices: np.ndarray
    """(Q,K) int64 corpus positions, best first; -1 pads."""
    scores: np.ndarray
    subset_indices: np.ndarray | None = None
    subset_scores: np.ndarray | None = None
    first_relevant_rank: np.ndarray | None = None
    """(Q,) 1-based rank of the best relevant item in the full ranking; 0 when there is none."""

    def ranked_ids(self, q: int, *, subset: bool = False) -> list[str]:
        idx = self.subset_indices if subset else self.indices
        assert idx is not None
        return [self.corpus_ids[i] for i in idx[q] if i >= 0]

    def to_table(self, task: Task) -> pa.Table:
        """One row per query, ids as strings, so the file is usable without cirbench."""
        cid = np.asarray(self.corpus_ids, dtype=object)

        def ids(mat: np.ndarray) -> list[list[str]]:
            return [list(cid[row[row >= 0]]) for row in mat]

        def scores(mat: np.ndarray, sc: np.ndarray) -> list[list[float]]:
            return [row_s[row_i >= 0].astype(np.float32).tolist() for row_i, row_s in zip(mat, sc)]

        cols: dict[str, list] = {
            "query_id": list(self.query_ids),
            "ranked_ids": ids(self.indices),
            "scores": scores(self.indices, self.scores),
            "relevant_ids": [list(q.relevant_ids) for q in task.queries],
            "category": [q.category for q in task.queries],
            "subcategory": [q.subcategory for q in task.queries],
        }
        if self.subset_indices is not None and self.subset_scores is not None:
            cols["subset_ranked_ids"] = ids(self.subset_indices)
            cols["subset_scores"] = scores(self.subset_indices, self.subset_scores)
        if self.first_relevant_rank is not None:
            cols["first_relevant_rank"] = self.first_relevant_rank.astype(np.int64).tolist()
        if task.run_columns is not None:  # the task's own (CIRCO's target and aspects, a geo task's GPS)
            own = task.run_columns(task, self.indices)
            clash = sorted(set(own) & set(cols))
            if clash:
                raise ValueError(f"task {task.name!r}: its run columns {clash} are ones cirbench writes")
            cols.update({k: list(v) for k, v in own.items()})
        return pa.table(cols)

    def write(self, path: str | os.PathLike[str], task: Task) -> None:
        write_run_table(self.to_table(task), path)


def write_run_table(table: pa.Table, path: str | os.PathLike[str]) -> None:
    with atomic_write(path, binary=True) as f:
        pq.write_table(table, f, compression="zstd")


def read_run_table(path: str | os.PathLike[str], sha256: str | None = None) -> pa.Table:
    """The run table; with `sha256` (what result.json recorded), refused unless the file is that one."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("run file is missing", file=path)
    if sha256 is not None:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DatasetError(
                "run file does not belong to its result.json (its SHA-256 differs from files.run_sha256: "
                "it was rewritten by another eval, or damaged); run the eval again",
                file=path,
            )
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    else:
        table = pq.ParquetFile(path).read()
    for col in ("query_id", "ranked_ids", "relevant_ids"):
        if col not in table.column_names:
            raise DatasetError("required column is missing", file=path, field=col)
    return table
