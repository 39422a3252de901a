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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Task, query_exclusions
from cirbench.models.base import check_modalities
from cirbench.retrieval.base import ComponentSpec, Context, register_retriever
from cirbench.retrieval.dense import TIE_BREAK, encode, query_items, resolve_instruction, subset_depth

if TYPE_CHECKING:
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
    from cirbench.retrieval.search import SearchResult  # torch: only when ranking

    return SearchResult(indices=indices, scores=top, first_relevant_rank=first)


# ------------------------------------------------------------------------------------------------------
# The retriever
# ------------------------------------------------------------------------------------------------------

SPEC = ComponentSpec(
    name="late-interaction",
    description="token sets of one model scored by their best pair (CoVR's CIRR scorer for BLIP-2); the "
                "model needs the encode_tokens hook",
    options={"model": "a model name whose encoder has encode_tokens (e.g. blip2, blip2:DIR)",
             "device": "cpu, cuda, ... (default cpu): where the model runs"},
    required=("model",),
)
SCORER = "max over (query token, gallery token) pairs of the dot product of normalised tokens"


@dataclass
class TokenSets:
    """An Encoder view whose vector is an item's token set, flattened, so the embedding cache keeps it.

    The encode loop normalises each flattened row, i.e. divides unit tokens by sqrt(tokens); `unflatten`
    undoes that."""

    inner: Any
    spec: Any = None
    n_tokens: int = 0

    def __post_init__(self) -> None:
        self.spec = self.inner.spec

    def fingerprint(self) -> dict[str, Any]:
        return {**self.inner.fingerprint(), "output": "token-sets"}

    def __getattr__(self, name: str) -> Any:  # preprocess / read_image hooks of the inner encoder
        if name in ("inner", "spec", "n_tokens"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def encode(self, batch: Any, *, role: Any, instruction: str | None = None) -> np.ndarray:
        tokens = np.asarray(self.inner.encode_tokens(batch, role=role, instruction=instruction), np.float32)
        self.n_tokens = tokens.shape[1]
        return tokens.reshape(tokens.shape[0], -1)

    def unflatten(self, flat: np.ndarray) -> np.ndarray:
        dim = int(self.inner.spec.dim)
        t = flat.shape[1] // dim
        return flat.reshape(flat.shape[0], t, dim) * np.float32(np.sqrt(t))


@dataclass
class LateInteraction:
    encoder: Any
    spec: ComponentSpec = SPEC

    def __post_init__(self) -> None:
        if not callable(getattr(self.encoder, "encode_tokens", None)):
            raise ValueError(f"model {self.encoder.spec.name!r} has no token sets (encode_tokens): "
                             "late-interaction needs a model such as blip2")

    def fingerprint(self) -> dict[str, Any]:
        return {"retriever": "late-interaction", "scorer": SCORER, "model": self.encoder.fingerprint()}

    def prepare(self, task: Task) -> Task:
        check_modalities(self.encoder.spec, {"query": task.metadata.query_modality,
                                             "corpus": task.metadata.corpus_modality})
        if task.corpus_frames or any(q.alt_items for q in task.queries):
            raise ValueError(f"task {task.name!r} averages several items per query or gallery entry, which "
                             "token sets cannot express; use the dense retriever")
        return task

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        return {"instructions": {"query": resolve_instruction(self.encoder, task, "query"),
                                 "document": resolve_instruction(self.encoder, task, "document")},
                "search": {"top_k": ctx.top_k, "scorer": SCORER, "tie_break": TIE_BREAK}}

    def retrieve(self, task: Task, ctx: Context) -> Run:
        view = TokenSets(self.encoder)
        d_inst = resolve_instruction(self.encoder, task, "document")
        gallery, _ = encode(view, list(task.corpus), "document", d_inst, ctx, "encoding gallery tokens")
        items, _ = query_items(task)
        queries, _ = encode(view, items, "query", resolve_instruction(self.encoder, task, "query"), ctx,
                            "encoding query tokens")
        with ctx.cost.timed("search"):
            scores = maxsim_scores(view.unflatten(queries), view.unflatten(gallery), device=ctx.device)
        pos = task.corpus_positions
        excl = query_exclusions(task)
        every = list(range(len(task.corpus)))
        allowed = [every if q.gallery is None or task.galleries is None
                   else sorted(pos[c] for c in task.galleries[q.gallery]) for q in task.queries]
        relevant = [[pos[c] for c in q.relevant_ids] for q in task.queries] if task.has_labels else None
        top = rank_scores(scores, ctx.top_k, exclude=excl, relevant=relevant, candidates=allowed)
        run = Run(query_ids=[q.id for q in task.queries], corpus_ids=[it.id for it in task.corpus],
                  indices=top.indices, scores=top.scores, first_relevant_rank=top.first_relevant_rank)
        if any(q.candidate_ids is not None for q in task.queries):
            sub = rank_scores(scores, subset_depth(task), exclude=excl,
                              candidates=[[pos[c] for c in (q.candidate_ids or ())] for q in task.queries])
            run = replace(run, subset_indices=sub.indices, subset_scores=sub.scores)
        return run


def _factory(*, model: str, device: str = "cpu") -> LateInteraction:
    from cirbench.models.registry import get_model

    extra: dict[str, Any] = {} if device == "cpu" else {"device": device}
    return LateInteraction(get_model(model, **extra))


register_retriever(SPEC, _factory)
