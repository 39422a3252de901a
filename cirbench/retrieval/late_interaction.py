"""Exact search when an item is several vectors: score(q, g) = max over token pairs of q_i . g_j.

CoVR's CIRR scorers for BLIP-2 (lucas-ventura/CoVR `src/test/blip2/cirr.py`, `cirr_val.py`) keep the 32
normalised query-token outputs of both the composed query and the target image and rank targets by the
largest dot product over all 32 x 32 pairs. No single vector per item expresses that, so this module
scores token sets directly, in chunks that bound memory, and orders exactly as `exact_search` does:
score descending, then corpus position ascending; excluded items never appear and do not count in the
rank of the first relevant item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cirbench.retrieval.search import SearchResult

_PAIR_BUDGET = 32 << 20
"""Token-pair scores held at once (float32: 128 MiB)."""


def maxsim_scores(queries: np.ndarray, corpus: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """(Q, N) float32: for each query and corpus item the max over (query token, corpus token) pairs.

    `queries` is (Q, Tq, d) and `corpus` (N, Tc, d), both taken as they are (normalise tokens first for
    cosines, as CoVR does).
    """
    import torch

    q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32), device=device)
    c = torch.as_tensor(np.ascontiguousarray(corpus, dtype=np.float32), device=device)
    if q.ndim != 3 or c.ndim != 3 or q.shape[2] != c.shape[2]:
        raise ValueError(f"token sets must be (items, tokens, dim) with one dim, got {tuple(q.shape)} "
                         f"and {tuple(c.shape)}")
    nq, tq, d = q.shape
    n, tc, _ = c.shape
    out = torch.empty((nq, n), dtype=torch.float32, device=device)
    if nq == 0 or n == 0:
        return out.cpu().numpy()
    cols = max(1, _PAIR_BUDGET // max(1, tq * tc * min(nq, 64)))
    rows = max(1, min(nq, _PAIR_BUDGET // max(1, tq * tc * min(n, cols))))
    flat_c = c.reshape(n * tc, d)
    for a in range(0, nq, rows):
        qa = q[a:a + rows].reshape(-1, d)
        b_rows = qa.shape[0] // tq
        for b in range(0, n, cols):
            cb = flat_c[b * tc:min(n, b + cols) * tc]
            pairs = (qa @ cb.T).reshape(b_rows, tq, -1, tc)
            out[a:a + b_rows, b:b + cols] = pairs.amax(dim=(1, 3))
    return out.cpu().numpy()


def rank_scores(
    scores: np.ndarray,
    k: int,
    *,
    exclude: Sequence[Sequence[int]] | None = None,
    relevant: Sequence[Sequence[int]] | None = None,
    candidates: Sequence[Sequence[int]] | None = None,
) -> SearchResult:
    """Top-`k` of a full (Q, N) score matrix, ordered (score desc, position asc), -1 padded.

    `candidates[i]`, when given, restricts query i to those positions (CIRR's subset ranking).
    """
    nq, n = scores.shape
    indices = np.full((nq, k), -1, dtype=np.int64)
    top = np.full((nq, k), -np.inf, dtype=np.float32)
    first = np.zeros(nq, dtype=np.int64) if relevant is not None else None
    for i in range(nq):
        allowed = np.ones(n, dtype=bool) if candidates is None else np.zeros(n, dtype=bool)
        if candidates is not None:
            allowed[np.asarray(candidates[i], dtype=np.int64)] = True
        if exclude is not None and len(exclude[i]):
            allowed[np.asarray(exclude[i], dtype=np.int64)] = False
        pos = np.flatnonzero(allowed)
        order = pos[np.lexsort((pos, -scores[i, pos].astype(np.float64)))]  # score desc, then position
        m = min(k, len(order))
        indices[i, :m] = order[:m]
        top[i, :m] = scores[i, order[:m]]
        if first is not None and relevant is not None and len(relevant[i]):
            is_rel = np.isin(order, np.asarray(relevant[i], dtype=np.int64))
            hits = np.flatnonzero(is_rel)
            first[i] = hits[0] + 1 if len(hits) else 0
    return SearchResult(indices=indices, scores=top, first_relevant_rank=first)
