"""The encode loop: Items -> vectors, through the cache, with images decoded in worker threads.

The model only does math: decoding (and the encoder's own `preprocess`, if it has one) runs in a thread pool
a few batches ahead, so on a GPU the forward pass is not starved by PIL. An encoder with `read_image(item)`
gets what that returns instead of a decoded image (the two-tower adapters with decode=torchvision read only
the file's bytes there, and decode the whole batch on the GPU). Finished batches are flushed to the cache as
they come, so an interrupted encode resumes where it stopped: SIGTERM flushes what is encoded before the
process exits (status 143), and a signal that arrives during a flush waits for it, so no part is written
twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cirbench.core.cache import EmbeddingCache
from cirbench.core.io import deferred_signals, sigterm_as_exit
from cirbench.core.progress import progress_bar
from cirbench.core.types import Item, Role
from cirbench.models.base import Batch, Encoder, l2_normalise
from cirbench.retrieval.distributed import barrier, world


def _prepare(encoder: Encoder, item: Item) -> Any | None:
    # An encoder that ignores pixels (a caption-based text model) says so, and no image is decoded for it.
    if item.image is None or not getattr(encoder, "needs_images", True):
        return None
    read = getattr(encoder, "read_image", None)
    if read is not None:  # the encoder reads the item itself (e.g. only its bytes, to decode on the GPU)
        return read(item)
    img = item.load_image()
    pre = getattr(encoder, "preprocess", None)
    return pre(img) if pre is not None else img


def _batches(
    encoder: Encoder, items: Sequence[Item], batch_size: int, workers: int, prefetch: int
) -> Iterator[Batch]:
    """Decoded batches in order, decoding up to `prefetch` batches ahead in a thread pool."""
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if workers <= 0:
        for chunk in chunks:
            yield Batch(chunk, [_prepare(encoder, it) for it in chunk])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cirbench-decode") as pool:
        pending: list[Any] = []
        it = iter(chunks)
        for chunk in it:
            pending.append((chunk, [pool.submit(_prepare, encoder, x) for x in chunk]))
            if len(pending) > prefetch:
                break
        while pending:
            chunk, futs = pending.pop(0)
            yield Batch(chunk, [f.result() for f in futs])
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, [pool.submit(_prepare, encoder, x) for x in nxt]))


def unit_vectors(encoder: Encoder) -> bool:
    """Whether the encoder's rows are unit vectors (cosine search). An encoder whose score is an inner
    product over vectors of meaningful length (HUG's augmented distance vectors) sets `unit_vectors =
    False`, and the encode loop and the mean over phrasings or frames leave the lengths alone."""
    return bool(getattr(encoder, "unit_vectors", True))


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def item_key(encoder: Encoder, item: Item) -> str:
    """The key a vector is de-duplicated and cached under: the Item's content, or, for an encoder whose
    vectors belong to ids (`vectors_by_id`, e.g. precomputed vectors), the id itself, so that two items
    with the same image and text still get their own vectors."""
    return f"id:{item.id}" if getattr(encoder, "vectors_by_id", False) else item.content_key()


def encode_items(
    encoder: Encoder,
    items: Sequence[Item],
    *,
    role: Role,
    instruction: str | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = 4,
    flush_every: int = 2048,
    progress: bool = True,
    description: str = "encoding",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors for `items` in order, plus stats (how many came from the cache, time, items/s).

    Identical items (same `item_key`) are encoded once. Text-bearing items are sorted by text length so
    batches pad little; the output is in the input order regardless.
    """
    t0 = time.perf_counter()
    keys = [item_key(encoder, it) for it in items]
    unique: dict[str, int] = {}
    for i, k in enumerate(keys):
        unique.setdefault(k, i)
    ukeys = list(unique)
    vectors: dict[str, np.ndarray] = {}
    if cache is not None:
        found, vecs = cache.get(ukeys)
        if vecs is not None:
            for k, v in zip((k for k, f in zip(ukeys, found) if f), vecs):
                vectors[k] = v
    todo = [items[unique[k]] for k in ukeys if k not in vectors]
    todo.sort(key=lambda it: (len(it.text or ""), item_key(encoder, it)))
    n_cached = len(ukeys) - len(todo)
    rank, size = world()
    if size > 1:
        if cache is None:
            raise ValueError(
                "distributed encoding merges shards through the embedding cache: "
                "do not combine it with --no-cache"
            )
        barrier()  # every rank has read the cache before any rank writes to it: all see the same todo list
        todo = todo[rank::size]  # every rank sorted the same list, so the shards are disjoint and complete
    dim: int | None = next(iter(vectors.values())).shape[0] if vectors else None
    pending_keys: list[str] = []
    pending_vecs: list[np.ndarray] = []

    def flush() -> None:
        # writing the part and forgetting its rows is one step: interrupted in between, the `finally`
        # below would write the same rows again
        with deferred_signals():
            if cache is not None and pending_keys:
                cache.put(pending_keys, np.concatenate(pending_vecs))
            pending_keys.clear()
            pending_vecs.clear()

    with sigterm_as_exit(), progress_bar(progress) as bar:
        task_id = bar.add_task(description, total=len(ukeys), completed=n_cached)
        try:
            for batch in _batches(
                encoder, todo, batch_size, default_workers() if workers is None else workers, prefetch
            ):
                out = np.asarray(encoder.encode(batch, role=role, instruction=instruction), dtype=np.float32)
                if out.ndim != 2 or out.shape[0] != len(batch.items):
                    raise ValueError(
                        f"encoder {encoder.spec.name!r} returned shape {out.shape} for a batch "
                        f"of {len(batch.items)} items"
                    )
                if dim is None:
                    dim = out.shape[1]
                elif out.shape[1] != dim:
                    raise ValueError(
                        f"encoder {encoder.spec.name!r} returned vectors of width {out.shape[1]}, "
                        f"but earlier (or cached) vectors have width {dim}"
                    )
                if not np.isfinite(out).all():
                    bad = batch.items[int(np.where(~np.isfinite(out).all(1))[0][0])].id
                    raise ValueError(
                        f"encoder {encoder.spec.name!r} returned non-finite values for item {bad!r}"
                    )
                if unit_vectors(encoder):
                    out = l2_normalise(out)
                bkeys = [item_key(encoder, it) for it in batch.items]
                vectors.update(zip(bkeys, out))
                pending_keys.extend(bkeys)
                pending_vecs.append(out)
                if len(pending_keys) >= flush_every:
                    flush()
                bar.advance(task_id, len(batch.items))
        finally:
            flush()  # keep finished work even when interrupted
    if size > 1 and cache is not None:
        barrier()  # every shard is in the cache now: read the whole set back
        merged = EmbeddingCache(cache.dir.parent.parent, cache.namespace)
        found, vecs = merged.get(ukeys)
        if not found.all() or vecs is None:
            raise RuntimeError(f"rank {rank}: {int((~found).sum())} vectors missing after the shard merge")
        vectors = dict(zip(ukeys, vecs))
        dim = vecs.shape[1]
    if dim is None:
        raise ValueError("nothing to encode: no items")
    result = np.stack([vectors[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    dt = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "items": len(items),
        "unique": len(ukeys),
        "from_cache": n_cached,
        "encoded": len(todo),
        "seconds": round(dt, 3),
        "items_per_s": round(len(todo) / dt, 2) if todo and dt > 0 else None,
    }
    if cache is not None and cache.rejected:
        stats["cache_parts_rejected"] = list(cache.rejected)
    return result, stats
