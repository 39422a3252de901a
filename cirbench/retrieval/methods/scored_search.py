"""Top-k search over score matrices that are not one dot product (fused rankings, hybrid similarities).

`search_task` (cirbench.retrieval.dense) ranks query vectors against gallery vectors. A method whose score
is an expression over several similarities (XR's reciprocal-rank fusion) instead supplies, for a block of
query rows, the (rows x gallery) matrix; this module applies the task's protocol to it in the same way:
each query ranks only its own gallery (FashionIQ's category), minus its exclusions (CIRR's reference, when
the protocol excludes it), ties broken by corpus position (`TIE_BREAK`), and a candidate-subset ranking
(CIRR's R_s@K) where the task has candidate sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Task, query_exclusions
from cirbench.retrieval.dense import subset_depth

BlockScores = Callable[[Sequence[int], np.ndarray], np.ndarray]
"""(query rows, allowed mask (rows x gallery)) -> (rows x gallery) scores; masked entries are ignored."""


def allowed_mask(task: Task, rows: Sequence[int]) -> np.ndarray:
    """(rows x gallery) booleans: True where the protocol lets query `row` rank that corpus item."""
    pos = task.corpus_positions
    excl = query_exclusions(task)
    mask = np.ones((len(rows), len(task.corpus)), dtype=bool)
    for j, r in enumerate(rows):
        q = task.queries[r]
        if q.gallery is not None:
            assert task.galleries is not None
            mask[j] = False
            mask[j, [pos[c] for c in task.galleries[q.gallery]]] = True
        mask[j, excl[r]] = False
    return mask


def order_row(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The allowed positions of one row, best first: score desc, then corpus position asc."""
    cand = np.flatnonzero(allowed)
    return cand[np.lexsort((cand, -scores[cand]))]


def search_scores(task: Task, block_scores: BlockScores, k: int, *, block: int = 256) -> Run:
    """Exact top-k of every query under `block_scores`, with the task's galleries, exclusions and subsets."""
    nq = len(task.queries)
    pos = task.corpus_positions
    indices = np.full((nq, k), -1, dtype=np.int64)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    first = np.zeros(nq, dtype=np.int64)
    has_subsets = any(q.candidate_ids is not None for q in task.queries)
    sdepth = subset_depth(task) if has_subsets else 0
    s_idx = np.full((nq, sdepth), -1, dtype=np.int64)
    s_sc = np.full((nq, sdepth), -np.inf, dtype=np.float32)
    excl = query_exclusions(task)
    for a in range(0, nq, block):
        rows = list(range(a, min(nq, a + block)))
        mask = allowed_mask(task, rows)
        s = np.asarray(block_scores(rows, mask), dtype=np.float64)
        for j, r in enumerate(rows):
            order = order_row(s[j], mask[j])
            top = order[:k]
            indices[r, : len(top)] = top
            scores[r, : len(top)] = s[j, top]
            q = task.queries[r]
            rel = {pos[c] for c in q.relevant_ids if c in pos}
            hits = np.flatnonzero(np.isin(order, list(rel))) if rel else np.empty(0, dtype=np.int64)
            first[r] = int(hits[0]) + 1 if hits.size else 0
            if has_subsets and q.candidate_ids is not None:
                cand = np.zeros(len(task.corpus), dtype=bool)
                cand[[pos[c] for c in q.candidate_ids if c in pos]] = True
                cand[excl[r]] = False
                sub = order_row(s[j], cand)[:sdepth]
                s_idx[r, : len(sub)] = sub
                s_sc[r, : len(sub)] = s[j, sub]
    run = Run(query_ids=[q.id for q in task.queries], corpus_ids=[it.id for it in task.corpus],
              indices=indices, scores=scores, first_relevant_rank=first if task.has_labels else None)
    if has_subsets:
        run.subset_indices, run.subset_scores = s_idx, s_sc
    return run


def first_ranks_after_rerank(head: np.ndarray, old_first: np.ndarray, task: Task) -> np.ndarray:
    """`first_relevant_rank` after the first `head.shape[1]` ids were reordered: re-read in the head for the
    queries whose first hit was there; the others (deeper, or none) are unchanged."""
    pos = task.corpus_positions
    new = np.asarray(old_first, dtype=np.int64).copy()
    depth = head.shape[1]
    for r, q in enumerate(task.queries):
        if 0 < new[r] <= depth:
            rel = [pos[c] for c in q.relevant_ids if c in pos]
            hits = np.flatnonzero(np.isin(head[r], rel))
            new[r] = int(hits[0]) + 1 if hits.size else 0
    return new


__all__ = ["BlockScores", "allowed_mask", "first_ranks_after_rerank", "order_row", "search_scores"]
