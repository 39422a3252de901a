"""The embedding cache: vectors on disk, keyed so that a vector is only ever served for the exact same input.

A cache *namespace* is a directory named by the hash of everything that changes a vector and is the same for
a whole encode call: the model fingerprint (id, revision, dtype, preprocessing, options), the role (query or
document) and the instruction. Inside it, each row is keyed by the Item's content hash. So a query vector is
never served for a gallery item, and a changed revision or instruction starts a new namespace.

Rows are appended as small parquet parts, each written atomically: an interrupted encode keeps every finished
part and resumes from there; duplicate keys across parts are harmless (the first one wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirbench.io import atomic_write, write_json

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("CIRBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cirbench"


def namespace_key(namespace: Mapping[str, Any]) -> str:
    blob = json.dumps({"cache_format": CACHE_FORMAT, **namespace}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class EmbeddingCache:
    """Vectors of one namespace (model fingerprint + role + instruction)."""

    def __init__(self, root: str | os.PathLike[str], namespace: Mapping[str, Any]) -> None:
        self.key = namespace_key(namespace)
        self.dir = Path(root) / "embeddings" / self.key
        self.namespace = dict(namespace)
        self._index: dict[str, tuple[int, int]] | None = None
        self._parts: list[np.ndarray] = []

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index, self._parts = {}, []
            for part in sorted(self.dir.glob("part-*.parquet")):
                t = pq.read_table(part)
                keys = t.column("key").to_pylist()
                vec_col = t.column("vector").combine_chunks()
                dim = vec_col.type.list_size
                vecs = vec_col.values.to_numpy(zero_copy_only=False).reshape(len(keys), dim)
                p = len(self._parts)
                self._parts.append(vecs)
                for i, k in enumerate(keys):
                    self._index.setdefault(k, (p, i))
        return self._index

    def __len__(self) -> int:
        return len(self._load())

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found keys in order) for the given content keys."""
        index = self._load()
        found = np.array([k in index for k in keys], dtype=bool)
        if not found.any():
            return found, None
        rows = [self._parts[p][i] for p, i in (index[k] for k, f in zip(keys, found) if f)]
        return found, np.stack(rows).astype(np.float32, copy=False)

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append one part atomically (a crash leaves either the whole part or nothing)."""
        if len(keys) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "namespace.json"
        if not meta.exists():
            write_json(meta, {"cache_format": CACHE_FORMAT, **self.namespace})
        dim = vectors.shape[1]
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        table = pa.table(
            {"key": pa.array(list(keys), pa.string()), "vector": pa.FixedSizeListArray.from_arrays(flat, dim)}
        )
        name = f"part-{len(list(self.dir.glob('part-*.parquet'))):06d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_write(self.dir / name, binary=True) as f:
            pq.write_table(table, f)
        if self._index is not None:
            p = len(self._parts)
            self._parts.append(vectors)
            for i, k in enumerate(keys):
                self._index.setdefault(k, (p, i))
