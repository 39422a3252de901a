"""The embedding cache: vectors on disk, keyed so that a vector is only ever served for the exact same input.

A cache *namespace* is a directory named by the hash of everything that changes a vector and is the same for
a whole encode call: the model fingerprint (id, revision, dtype, preprocessing, options), the role (query or
document) and the instruction. Inside it, each row is keyed by the Item's key
(`cirbench.retrieval.encode.item_key`). So a query vector is never served for a gallery item, and a
changed revision or instruction starts a new namespace.

Rows are appended as small parquet parts, each written atomically and named by the SHA-256 of its bytes
(`part-<n>-<sha256[:32]>.parquet`). Every read checks that checksum, the schema, the width recorded in
`namespace.json` and that every value is finite; a part that fails is reported by name, renamed to
`*.bad` and never served, so its items are simply encoded again. An interrupted encode keeps every
finished part and resumes from there; duplicate keys across parts are harmless (the first one wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirbench.core.io import atomic_write, write_json

CACHE_FORMAT = 2
"""2: parts named by their checksum, checked on read (format 1 namespaces are not read)."""
PART_RE = re.compile(r"^part-(\d{6})-([0-9a-f]{32})\.parquet$")

log = logging.getLogger("cirbench.core.cache")


def default_cache_dir() -> Path:
    env = os.environ.get("CIRBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cirbench"


def namespace_key(namespace: Mapping[str, Any]) -> str:
    blob = json.dumps({"cache_format": CACHE_FORMAT, **namespace}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def part_bytes(keys: Sequence[str], vectors: np.ndarray) -> tuple[bytes, str]:
    """A part's parquet bytes and the checksum its file name carries."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {"key": pa.array(list(keys), pa.string()), "vector": pa.FixedSizeListArray.from_arrays(flat, dim)}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    return data, hashlib.sha256(data).hexdigest()[:32]


class BadPart(ValueError):
    """A cache part that must not be served; the message says why."""


class EmbeddingCache:
    """Vectors of one namespace (model fingerprint + role + instruction)."""

    def __init__(self, root: str | os.PathLike[str], namespace: Mapping[str, Any]) -> None:
        self.key = namespace_key(namespace)
        self.dir = Path(root) / "embeddings" / self.key
        self.namespace = dict(namespace)
        self._index: dict[str, tuple[int, int]] | None = None
        self._parts: list[np.ndarray] = []
        self.rejected: list[dict[str, str]] = []
        """Parts this instance set aside: {"part": path, "reason": why} (also logged as warnings)."""

    # -- reading ------------------------------------------------------------------------------------------

    def _dim(self) -> int | None:
        meta = self.dir / "namespace.json"
        try:
            dim = json.loads(meta.read_text()).get("dim")
        except (OSError, ValueError):
            return None
        return int(dim) if isinstance(dim, int) else None

    def _read_part(self, path: Path, dim: int | None) -> tuple[list[str], np.ndarray]:
        m = PART_RE.match(path.name)
        if m is None:
            raise BadPart("its name carries no checksum")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest()[:32] != m.group(2):
            raise BadPart("its checksum does not match its bytes")
        try:
            t = pq.ParquetFile(pa.BufferReader(data)).read()
        except (pa.ArrowException, OSError) as e:
            raise BadPart(f"it is not readable parquet ({e})") from None
        vector_type = t.schema.field("vector").type if "vector" in t.column_names else None
        if t.column_names != ["key", "vector"] or not pa.types.is_fixed_size_list(vector_type):
            raise BadPart(f"unexpected columns {t.schema}")
        keys = t.column("key").to_pylist()
        vec_col = t.column("vector").combine_chunks()
        width = vec_col.type.list_size
        if dim is not None and width != dim:
            raise BadPart(f"its vectors have width {width}, the namespace's have width {dim}")
        vecs = vec_col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(keys), width)
        if any(k is None for k in keys):
            raise BadPart("a key is missing")
        if not np.isfinite(vecs).all():
            bad = keys[int(np.where(~np.isfinite(vecs).all(axis=1))[0][0])]
            raise BadPart(f"it holds non-finite values (first for key {bad!r})")
        return keys, vecs

    def _reject(self, part: Path, reason: str) -> None:
        bad = part.with_name(part.name + ".bad")
        try:
            os.replace(part, bad)
            where = f"set aside as {bad.name}"
        except OSError as e:
            where = f"could not be set aside ({e})"
        self.rejected.append({"part": os.fspath(part), "reason": reason})
        log.warning("cache part %s is not served: %s; %s, and its items will be encoded again", part, reason,
                    where)

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index, self._parts = {}, []
            dim = self._dim()
            for part in sorted(self.dir.glob("part-*.parquet")):
                try:
                    keys, vecs = self._read_part(part, dim)
                except BadPart as e:
                    self._reject(part, str(e))
                    continue
                dim = dim if dim is not None else vecs.shape[1]
                p = len(self._parts)
                self._parts.append(vecs)
                for i, k in enumerate(keys):
                    self._index.setdefault(k, (p, i))
        return self._index

    def __len__(self) -> int:
        return len(self._load())

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found keys in order) for the given keys."""
        index = self._load()
        found = np.array([k in index for k in keys], dtype=bool)
        if not found.any():
            return found, None
        rows = [self._parts[p][i] for p, i in (index[k] for k, f in zip(keys, found) if f)]
        return found, np.stack(rows).astype(np.float32, copy=False)

    # -- writing ------------------------------------------------------------------------------------------

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Append one part atomically (a crash leaves either the whole part or nothing); returns its path."""
        if len(keys) == 0:
            return None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for vectors of shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to cache non-finite vectors")
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "namespace.json"
        dim = self._dim()
        if dim is None:
            write_json(meta, {"cache_format": CACHE_FORMAT, "dim": int(vectors.shape[1]), **self.namespace})
        elif dim != vectors.shape[1]:
            raise ValueError(f"vectors of width {vectors.shape[1]} for a cache namespace of width {dim}")
        data, digest = part_bytes(keys, vectors)
        seq = len(list(self.dir.glob("part-*.parquet")))
        path = self.dir / f"part-{seq:06d}-{digest}.parquet"
        with atomic_write(path, binary=True) as f:
            f.write(data)
        if self._index is not None:
            p = len(self._parts)
            self._parts.append(vectors)
            for i, k in enumerate(keys):
                self._index.setdefault(k, (p, i))
        return path


def software(folder: Path, code: Sequence[str], packages: Sequence[str]) -> dict[str, object]:
    """What a cached result depends on besides its inputs: `code` files in `folder` (by content) and the
    `packages`' versions (from metadata, without importing them). Used by the search and score caches."""
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in code}
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"code": digests, "packages": versions}
