"""The dense search's result, cached by everything it is computed from: a warm re-eval imports no torch.

When every vector of an eval comes from the embedding cache, the search is the only step left that needs
torch, and importing torch costs more than the whole rest of a warm eval (about 2 s of a 3-4 s run on a
2-core machine). The search is deterministic (see `search`): the same vectors, gallery rules, depth and
search settings on the same software and CPU give the same ranking, bit for bit. So its output is stored
in the cache root (`searches/<key>.npz`, written atomically, read without pickle) under a key of:

- the vectors' bytes and the search inputs the task derives from them (per query: gallery, relevant and
  excluded positions, candidate subset; the galleries; whether the task has labels), depth K, the subset
  depth, and `--search-dtype`, `--search-backend`;
- the code that computes it (`search.py` and `dense.py`, by content) and what it runs on (the torch,
  numpy and faiss versions, read from package metadata without importing them, the machine and CPU model).

Only CPU searches are cached: a GPU search is fast, and the encoder that fed it loaded torch anyway.
A file that does not match its key's shapes is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from functools import cache
from pathlib import Path

import numpy as np

from cirbench.core.cache import software
from cirbench.core.io import atomic_write
from cirbench.core.run import Run
from cirbench.core.types import Task, query_exclusions

FORMAT = 1
_CODE = ("search.py", "dense.py")
_PACKAGES = ("torch", "numpy", "faiss-cpu", "faiss-gpu", "faiss")


def search_key(task: Task, qv: np.ndarray, cv: np.ndarray, k: int, *, subset_depth: int, dtype: str,
               backend: str) -> str:
    """Hash of everything the dense search's Run is computed from (see the module docstring)."""
    h = hashlib.sha256()
    pos = task.corpus_positions
    inputs = {
        "format": FORMAT, "software": _software(), "k": k, "subset_depth": subset_depth, "dtype": dtype,
        "backend": backend, "has_labels": task.has_labels,
        "queries": [[q.gallery, sorted(pos[c] for c in q.relevant_ids),
                     None if q.candidate_ids is None else [pos[c] for c in q.candidate_ids]]
                    for q in task.queries],
        "exclude": query_exclusions(task),
        "galleries": {g: sorted(pos[c] for c in ids) for g, ids in sorted((task.galleries or {}).items())},
    }
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for x in (qv, cv):
        a = np.ascontiguousarray(x)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def load(root: Path, key: str, task: Task, k: int) -> Run | None:
    """The cached Run under `key`, or None (none yet, unreadable, or of the wrong shape)."""
    path = root / "searches" / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, KeyError):
        return None
    nq = len(task.queries)
    indices, scores = arrays.get("indices"), arrays.get("scores")
    if indices is None or scores is None or indices.shape != (nq, k) or scores.shape != (nq, k):
        return None
    return Run(query_ids=[q.id for q in task.queries], corpus_ids=[it.id for it in task.corpus],
               indices=indices, scores=scores, first_relevant_rank=arrays.get("first_relevant_rank"),
               subset_indices=arrays.get("subset_indices"), subset_scores=arrays.get("subset_scores"))


def store(root: Path, key: str, run: Run) -> None:
    arrays = {name: getattr(run, name) for name in ("indices", "scores", "first_relevant_rank",
                                                   "subset_indices", "subset_scores")
              if getattr(run, name) is not None}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = root / "searches" / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, binary=True) as f:
        f.write(buf.getvalue())


@cache
def _software() -> dict[str, object]:
    here = Path(__file__).resolve().parent
    return {**software(here, _CODE, _PACKAGES), "machine": platform.machine(), "cpu": _cpu_model()}


def _cpu_model() -> str:
    """The CPU's model name (its GEMM kernels depend on it), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
