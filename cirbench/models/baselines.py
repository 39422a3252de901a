"""Models that need no weights: `random` (chance level) and `precomputed` (vectors made elsewhere)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from cirbench.models.base import Batch, ModelSpec, l2_normalise
from cirbench.models.registry import register_family, register_model
from cirbench.types import DatasetError, Role


class RandomEncoder:
    """Seeded random unit vectors per (item content, role): the chance-level floor of every table."""

    def __init__(self, spec: ModelSpec, *, seed: int = 0, dim: int = 64, **_: Any) -> None:
        self.spec, self.seed, self.dim = spec, seed, dim

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
    (`vectors_by_id`): two queries with the same image and text still get their own vectors.
    """

    vectors_by_id = True

    def __init__(self, path: str | os.PathLike[str], **_: Any) -> None:
        self.path = Path(path)
        self.table: dict[tuple[str, str], np.ndarray] = {}
        dims: set[int] = set()
        if self.path.is_dir():
            for role in ("query", "document"):
                vec_p, ids_p = self.path / f"{role}.npy", self.path / f"{role}_ids.txt"
                if not vec_p.exists():
                    continue
                vecs = np.load(vec_p, allow_pickle=False)
                ids = ids_p.read_text().splitlines()
                if vecs.ndim != 2 or len(ids) != len(vecs):
                    raise DatasetError(f"{len(ids)} ids for a {vecs.shape} array", file=vec_p, field=role)
                dims.add(vecs.shape[1])
                self.table.update({(role, i): v for i, v in zip(ids, vecs.astype(np.float32))})
        else:
            t = pq.read_table(self.path)
            for col in ("id", "role", "vector"):
                if col not in t.column_names:
                    raise DatasetError("required column is missing", file=self.path, field=col)
            for n, (i, r, v) in enumerate(
                zip(t["id"].to_pylist(), t["role"].to_pylist(), t["vector"].to_pylist())
            ):
                if r not in ("query", "document"):
                    raise DatasetError(
                        f"role must be 'query' or 'document', not {r!r}",
                        file=self.path,
                        record=i if i is not None else n,
                        field="role",
                    )
                dims.add(len(v))
                self.table[(r, i)] = np.asarray(v, dtype=np.float32)
        if len(dims) != 1:
            raise DatasetError(
                f"vectors must all have one width; found widths {sorted(dims)}",
                file=self.path,
                field="vector",
            )
        dim = dims.pop()
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


RANDOM = ModelSpec(
    name="random",
    id="cirbench/random",
    revision="1",
    dim=64,
    license="Apache-2.0",
    parameters=0,
    description="Seeded random vectors: chance level.",
)
register_model(
    RANDOM, lambda spec, **o: RandomEncoder(spec, **{k: v for k, v in o.items() if k in ("seed", "dim")})
)
register_family("precomputed", lambda target, **o: PrecomputedEncoder(target))
