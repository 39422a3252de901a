"""The embedding cache: exact keys, role separation, and resuming an interrupted encode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cirbench.core.cache import EmbeddingCache
from cirbench.core.types import Item
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.baselines import RandomEncoder
from cirbench.retrieval.encode import encode_items
from tests.conftest import png

SPEC = ModelSpec(name="random", id="cirbench/random")


def items(n: int) -> list[Item]:
    return [Item(id=f"i{i}", image=png((i, 0, 0)), text=f"text {i}") for i in range(n)]


def test_query_vector_never_served_for_a_document(tmp_path: Path) -> None:
    enc = RandomEncoder(SPEC)
    data = items(3)
    q_cache = EmbeddingCache(tmp_path, {"model": enc.fingerprint(), "role": "query", "instruction": None})
    d_cache = EmbeddingCache(tmp_path, {"model": enc.fingerprint(), "role": "document", "instruction": None})
    assert q_cache.key != d_cache.key
    qv, _ = encode_items(enc, data, role="query", cache=q_cache, progress=False, workers=0)
    dv, stats = encode_items(enc, data, role="document", cache=d_cache, progress=False, workers=0)
    assert stats["from_cache"] == 0 and not np.allclose(qv, dv)


def test_namespace_covers_instruction_and_model(tmp_path: Path) -> None:
    base = {"model": RandomEncoder(SPEC).fingerprint(), "role": "query", "instruction": "find it"}
    keys = {
        EmbeddingCache(tmp_path, base).key,
        EmbeddingCache(tmp_path, {**base, "instruction": "find it!"}).key,
        EmbeddingCache(tmp_path, {**base, "model": RandomEncoder(SPEC, seed=1).fingerprint()}).key,
    }
    assert len(keys) == 3


def test_content_key_changes_with_content() -> None:
    a = Item(id="x", image=png((1, 1, 1)), text="t")
    assert a.content_key() == Item(id="other-id", image=png((1, 1, 1)), text="t").content_key()
    assert a.content_key() != Item(id="x", image=png((1, 1, 2)), text="t").content_key()
    assert a.content_key() != Item(id="x", image=png((1, 1, 1)), text="t ").content_key()


class Crashing(RandomEncoder):
    """Fails on its n-th batch, like a process killed halfway through a gallery."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(SPEC)
        self.calls, self.fail_at, self.seen = 0, fail_at, 0

    def encode(self, batch: Batch, **kw: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        self.seen += len(batch.items)
        return super().encode(batch, **kw)


def test_interrupted_encode_resumes(tmp_path: Path) -> None:
    data = items(10)
    ns = {"model": RandomEncoder(SPEC).fingerprint(), "role": "document", "instruction": None}
    crashing = Crashing(fail_at=3)
    with pytest.raises(RuntimeError):
        encode_items(
            crashing,
            data,
            role="document",
            cache=EmbeddingCache(tmp_path, ns),
            batch_size=2,
            flush_every=2,
            progress=False,
            workers=0,
        )
    assert len(EmbeddingCache(tmp_path, ns)) == 4  # two finished batches survived
    resumed = Crashing(fail_at=-1)
    vecs, stats = encode_items(
        resumed,
        data,
        role="document",
        cache=EmbeddingCache(tmp_path, ns),
        batch_size=2,
        progress=False,
        workers=0,
    )
    assert stats["from_cache"] == 4 and resumed.seen == 6  # nothing lost, nothing encoded twice
    fresh, _ = encode_items(RandomEncoder(SPEC), data, role="document", progress=False, workers=0)
    np.testing.assert_allclose(vecs, fresh, rtol=1e-6)
