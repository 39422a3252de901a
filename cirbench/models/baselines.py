"""Models that need no weights: `random` (chance level) and `precomputed` (vectors made elsewhere)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cirbench.core.options import Option, OptionTable
from cirbench.core.types import DatasetError, Role
from cirbench.models._torch import DEVICE, DTYPE
from cirbench.models.base import Batch, ModelSpec, l2_normalise
from cirbench.models.registry import register_family, register_model

UNUSED = " (accepted, so an eval's --device / --dtype apply to every model; it computes no float)"
RANDOM_OPTIONS: OptionTable = (
    Option("seed", "int", "seed of the random vectors", 0),
    Option("dim", "int", "width of the vectors", 64, low=1),
    Option("device", help=DEVICE.help + UNUSED), Option("dtype", help=DTYPE.help + UNUSED),
)
PRECOMPUTED_OPTIONS: OptionTable = (
    Option("dim", "int", "the width the file's vectors must have (checked, not changed)", low=1),
    Option("device", help=DEVICE.help + UNUSED), Option("dtype", help=DTYPE.help + UNUSED),
)


class RandomEncoder:
    """Seeded random unit vectors per (item content, role): the chance-level floor of every table."""

    def __init__(self, spec: ModelSpec, *, seed: int = 0, dim: int = 64) -> None:
        self.spec, self.seed, self.dim = spec, int(seed), _opt_dim(dim)

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "random", "seed": self.seed, "dim": self.dim}

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        rows = []
        for it in batch.items:
            h = hashlib.sha256(f"{self.seed}:{role}:{it.content_key()}".encode()).digest()
            rows.append(np.random.default_rng(int.from_bytes(h[:8], "little")).standard_normal(self.dim))
        return l2_normalise(np.stack(rows))


class PrecomputedEncoder:
    """Vectors computed outside cirbench, looked up by item id and role.

    Accepted files:
    - a parquet file with columns `id` (string), `role` ("query" or "document") and `vector` (list of
      floats, all the same width);
    - a directory with `query.npy` + `query_ids.txt` and `document.npy` + `document_ids.txt` (one id a line).
    Query ids are the task's query ids; document ids are corpus ids. Vectors belong to ids
    (`vectors_by_id`): two queries with the same image and text still get their own vectors. Every row is
    checked when the file is read (one (role, id) per row, no null, NaN or all-zero vector, one width; `dim=N`
    also checks the width against N), and a bad row is named by file and row. No image is ever decoded for
    this model.
    """

    vectors_by_id = True
    needs_images = False
    """The vectors were made elsewhere: the encode loop decodes no image for it (none need exist here)."""

    def __init__(self, path: str | os.PathLike[str], *, dim: int | str | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.table, width = _read_npy_dir(self.path)
        elif self.path.is_file():
            self.table, width = _read_parquet(self.path)
        else:
            raise DatasetError("vectors file is missing (a .parquet file, or a folder of query.npy / "
                               "document.npy with their _ids.txt)", file=self.path)
        if dim is not None and width != _opt_dim(dim):
            raise DatasetError(f"the vectors have width {width}, and dim={dim} was asked for", file=self.path,
                               field="vector")
        dim = width
        digest = hashlib.sha256()
        for (r, i), v in sorted(self.table.items()):
            digest.update(f"{r}:{i}".encode())
            digest.update(v.tobytes())
        self.digest = digest.hexdigest()[:16]
        self.spec = ModelSpec(
            name=f"precomputed:{self.path.name}",
            id=str(self.path),
            revision=self.digest,
            dim=dim,
            description="vectors read from a file",
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "precomputed", "digest": self.digest}

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        out = []
        for it in batch.items:
            key = (role, it.id)
            if key not in self.table:
                raise DatasetError(
                    f"no {role} vector for id {it.id!r}", file=self.path, record=it.id, field="id"
                )
            out.append(self.table[key])
        return l2_normalise(np.stack(out))


ROLES = ("query", "document")


def _opt_dim(value: Any) -> int:
    try:
        dim = int(value)
    except (TypeError, ValueError):
        dim = 0
    if isinstance(value, bool) or dim < 1 or str(dim) != str(value).strip():
        raise ValueError(f"option 'dim' must be a positive integer, not {value!r}")
    return dim


def _check_rows(path: Path, keys: list[tuple[Any, Any]], vecs: np.ndarray, rows: list[str]) -> None:
    """Refuse duplicate (role, id) pairs, and NaN, infinite or all-zero vectors, naming the first row."""
    seen: dict[tuple[Any, Any], int] = {}
    for n, key in enumerate(keys):
        if key in seen:
            raise DatasetError(f"duplicate ({key[0]}, {key[1]!r}) row: the same item has a vector at "
                               f"{rows[seen[key]]} already", file=path, record=rows[n], field="id")
        seen[key] = n
    bad = ~np.isfinite(vecs).all(axis=1)
    if bad.any():
        n = int(np.argmax(bad))
        raise DatasetError("vector holds NaN or infinite values", file=path, record=rows[n], field="vector")
    zero = ~vecs.any(axis=1)
    if zero.any():
        n = int(np.argmax(zero))
        raise DatasetError("vector is all zero (it has no direction to compare)", file=path, record=rows[n],
                           field="vector")


def _read_parquet(path: Path) -> tuple[dict[tuple[str, str], np.ndarray], int]:
    """(role, id) -> vector and the width, from columns id, role, vector; every row checked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        t = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"not a readable parquet file: {e}", file=path) from e
    for col in ("id", "role", "vector"):
        if col not in t.column_names:
            raise DatasetError(f"required column is missing (has {t.column_names})", file=path, field=col)
    if t.num_rows == 0:
        raise DatasetError("the file has no rows", file=path)
    vtype = t.schema.field("vector").type
    if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype) or pa.types.is_fixed_size_list(vtype)) \
            or not (pa.types.is_floating(vtype.value_type) or pa.types.is_integer(vtype.value_type)):
        raise DatasetError(f"vector must be a list of numbers, not {vtype}", file=path, field="vector")
    ids, roles = t["id"].to_pylist(), t["role"].to_pylist()
    rows = [f"row {n}" for n in range(t.num_rows)]
    for n, (i, r) in enumerate(zip(ids, roles)):
        if not isinstance(i, str) or not i:
            raise DatasetError(f"id must be a non-empty string, not {i!r}", file=path, record=rows[n],
                               field="id")
        if r not in ROLES:
            raise DatasetError(f"role must be 'query' or 'document', not {r!r}", file=path, record=rows[n],
                               field="role")
    col = t["vector"].combine_chunks()
    nulls = col.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        raise DatasetError("vector is null", file=path, record=rows[int(np.argmax(nulls))], field="vector")
    widths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if (widths != widths[0]).any():
        n = int(np.argmax(widths != widths[0]))
        raise DatasetError(f"vector width {widths[n]} differs from the first row's {widths[0]}", file=path,
                           record=rows[n], field="vector")
    if widths[0] < 1:
        raise DatasetError("vectors are empty", file=path, record=rows[0], field="vector")
    values = pc.list_flatten(col)
    if values.null_count:
        first = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        raise DatasetError("vector holds a null value", file=path, record=rows[first // int(widths[0])],
                           field="vector")
    vecs = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), int(widths[0]))
    keys = list(zip(roles, ids))
    _check_rows(path, keys, vecs, rows)
    return dict(zip(keys, vecs)), int(widths[0])


def _read_npy_dir(path: Path) -> tuple[dict[tuple[str, str], np.ndarray], int]:
    """(role, id) -> vector and the width, from <role>.npy + <role>_ids.txt; no pickle is ever loaded."""
    table: dict[tuple[str, str], np.ndarray] = {}
    widths: dict[int, Path] = {}
    for role in ROLES:
        vec_p, ids_p = path / f"{role}.npy", path / f"{role}_ids.txt"
        if not vec_p.exists():
            continue
        try:
            vecs = np.load(vec_p, allow_pickle=False)
        except (ValueError, OSError) as e:  # an object (pickled) array, or not a .npy file
            raise DatasetError(f"not a numeric .npy array (pickled arrays are never loaded): {e}",
                               file=vec_p) from e
        real = np.issubdtype(vecs.dtype, np.floating) or np.issubdtype(vecs.dtype, np.integer)
        if vecs.ndim != 2 or not real:
            raise DatasetError(f"expected a 2-d array of numbers, found {vecs.dtype} {vecs.shape}",
                               file=vec_p)
        try:
            ids = ids_p.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise DatasetError(f"the ids of {vec_p.name} are missing (one id a line)", file=ids_p) from e
        if len(ids) != len(vecs):
            raise DatasetError(f"{len(ids)} ids for the {len(vecs)} rows of {vec_p.name}", file=ids_p,
                               field=role)
        rows = [f"line {n + 1}" for n in range(len(ids))]
        for n, i in enumerate(ids):
            if not i.strip():
                raise DatasetError("empty id", file=ids_p, record=rows[n], field="id")
        vecs = vecs.astype(np.float32)
        _check_rows(ids_p, [(role, i) for i in ids], vecs, rows)
        widths[vecs.shape[1]] = vec_p
        table.update({(role, i): v for i, v in zip(ids, vecs)})
    if not table:
        raise DatasetError("no vectors: expected query.npy + query_ids.txt and/or document.npy + "
                           "document_ids.txt in this folder", file=path)
    if len(widths) > 1:
        raise DatasetError(f"query and document vectors differ in width ({sorted(widths)})", file=path,
                           field="vector")
    return table, next(iter(widths))


RANDOM = ModelSpec(
    name="random",
    id="cirbench/random",
    revision="1",
    dim=64,
    modalities=("image", "text", "image+text", "gps"),
    license="Apache-2.0",
    parameters=0,
    description="Seeded random vectors: chance level.",
)


def _random(spec: ModelSpec | None, target: str | None, *, seed: int = 0, dim: int | None = None,
            device: str | None = None, dtype: str | None = None) -> RandomEncoder:
    spec = spec or RANDOM
    return RandomEncoder(spec, seed=seed, dim=dim or spec.dim or 64)


def _precomputed(spec: ModelSpec | None, target: str | None, *, dim: int | None = None,
                 device: str | None = None, dtype: str | None = None) -> PrecomputedEncoder:
    return PrecomputedEncoder(str(target), dim=dim)


register_model(RANDOM, _random, options=RANDOM_OPTIONS)
register_family("precomputed", _precomputed, options=PRECOMPUTED_OPTIONS)
