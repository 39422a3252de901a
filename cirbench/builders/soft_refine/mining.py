"""Stage 1a: candidate mining: for each query, the top-k gallery images under three query types (SoFT §5.3).

- `caption`: sentence 1 of the LMM's description of the wanted image (the requested change), text -> image;
- `joined`: both sentences joined (the change plus what stays), text -> image; skipped if equal to `caption`;
- `target_image`: the original ground-truth target, image -> image (its visual near-duplicates).
Gallery and text vectors go through cirbench's embedding cache (the same namespace `cirbench eval` uses), so a
model's gallery is embedded once for evaluation and refinement alike. Rankings are ordered by score, then by
gallery position, so they are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cirbench.core.types import Item, Role, Task
from cirbench.models.base import Encoder


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, by score descending then position ascending (ties included exactly)."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, np.int64)
    neg = -scores.astype(np.float64)
    kth = np.partition(neg, k - 1)[k - 1]
    cand = np.flatnonzero(neg <= kth)
    return cand[np.lexsort((cand, neg[cand]))][:k]


def encode(
    encoder: Encoder, items: Sequence[Item], role: Role, *, batch_size: int, progress: bool, label: str
) -> np.ndarray:
    """Vectors through the shared embedding cache."""
    from cirbench.core.cache import EmbeddingCache, default_cache_dir
    from cirbench.retrieval.encode import encode_items

    cache = EmbeddingCache(
        default_cache_dir(), {"model": encoder.fingerprint(), "role": role, "instruction": None}
    )
    vecs, _ = encode_items(
        encoder,
        list(items),
        role=role,
        cache=cache,
        batch_size=batch_size,
        progress=progress,
        description=label,
    )
    return vecs


class Miner:
    """Ranks a task's gallery (or a query's sub-gallery) for text and image queries."""

    def __init__(
        self,
        encoder: Encoder,
        task: Task,
        *,
        top_k: int,
        exclude_reference: bool,
        batch_size: int,
        progress: bool,
    ) -> None:
        self.encoder, self.task, self.top_k = encoder, task, int(top_k)
        self.exclude_reference, self.batch_size = exclude_reference, int(batch_size)
        self.gallery = encode(
            encoder,
            task.corpus,
            "document",
            batch_size=batch_size,
            progress=progress,
            label="embedding the gallery",
        )
        pos = task.corpus_positions
        self.sub = {
            g: np.array(sorted(pos[i] for i in ids), np.int64) for g, ids in (task.galleries or {}).items()
        }

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        items = [Item(id=f"text{k}", text=t) for k, t in enumerate(texts)]
        return encode(self.encoder, items, "query", batch_size=self.batch_size, progress=False, label="texts")

    def rank(self, vector: np.ndarray, gallery: str | None, reference: str | None) -> list[tuple[str, float]]:
        """[(corpus id, score)] of the top-k for one query vector."""
        positions = self.sub[gallery] if gallery is not None and gallery in self.sub else None
        scores = self.gallery @ vector if positions is None else self.gallery[positions] @ vector
        allowed = positions if positions is not None else np.arange(len(self.task.corpus))
        if self.exclude_reference and reference is not None and reference in self.task.corpus_positions:
            keep = allowed != self.task.corpus_positions[reference]
            scores, allowed = scores[keep], allowed[keep]
        best = topk(scores, self.top_k)
        return [(self.task.corpus[int(allowed[b])].id, round(float(scores[b]), 6)) for b in best]

    def target_vector(self, target: str) -> np.ndarray:
        return np.asarray(self.gallery[self.task.corpus_positions[target]])

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.fingerprint(),
            "top_k": self.top_k,
            "exclude_reference": self.exclude_reference,
        }
