"""Reciprocal-rank fusion over several embedding models (`--retriever rrf --retriever-option models=a,b`).

Each model ranks the gallery on its own (`Dense`, with the task's exclusions and galleries); a gallery item
then scores sum over models of 1 / (k + rank), rank 1-based within that model's first `depth` ids (an item
a model did not rank there adds nothing). Ties go to the lower corpus position, as in exact search. Candidate
subsets (CIRR's R_s@K) are fused the same way from each model's subset ranking. The rank of the first
relevant item comes from the fused list alone, so a target outside every model's top `depth` is a miss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Task
from cirbench.retrieval.base import ComponentSpec, Context, register_retriever
from cirbench.retrieval.dense import TIE_BREAK, Dense

SPEC = ComponentSpec(
    name="rrf",
    description="reciprocal-rank fusion of several embedding models' rankings (Cormack et al. 2009)",
    options={"models": "comma-separated model names (required, at least two)",
             "k": "int, default 60: the constant in 1 / (k + rank)",
             "depth": "int, default 100: how many ids of each model's ranking are fused",
             "device": "cpu, cuda, ... (default cpu): where the models run"},
    required=("models",),
)


def fuse(rankings: list[np.ndarray], k: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (Q, width): rankings (Q, D) of corpus positions (-1 pads) fused by RRF."""
    nq = rankings[0].shape[0]
    indices = np.full((nq, width), -1, dtype=np.int64)
    scores = np.full((nq, width), -np.inf, dtype=np.float32)
    for q in range(nq):
        total: dict[int, float] = {}
        for ranking in rankings:
            for r, pos in enumerate(ranking[q]):
                if pos >= 0:
                    total[int(pos)] = total.get(int(pos), 0.0) + 1.0 / (k + r + 1)
        order = sorted(total, key=lambda p: (-total[p], p))[:width]
        indices[q, :len(order)] = order
        scores[q, :len(order)] = [total[p] for p in order]
    return indices, scores


@dataclass
class ReciprocalRankFusion:
    members: list[Dense]
    k: int = 60
    depth: int = 100
    spec: ComponentSpec = SPEC

    def fingerprint(self) -> dict[str, Any]:
        return {"retriever": "rrf", "k": self.k, "depth": self.depth,
                "members": [m.fingerprint() for m in self.members]}

    def prepare(self, task: Task) -> Task:
        for m in self.members:
            if m.prepare(task) is not task:
                raise ValueError(f"model {m.encoder.spec.name!r} rewrites the task's inputs for itself, so "
                                 "it cannot share a fused ranking; evaluate it on its own")
        return task

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        inner = replace(ctx, top_k=max(self.depth, ctx.top_k))
        return {"fusion": "reciprocal rank fusion: sum over models of 1 / (k + rank)", "k": self.k,
                "depth": self.depth, "search": {"top_k": ctx.top_k, "tie_break": TIE_BREAK},
                "members": [m.describe(task, inner) for m in self.members]}

    def retrieve(self, task: Task, ctx: Context) -> Run:
        inner = replace(ctx, top_k=max(self.depth, ctx.top_k))
        runs = [m.retrieve(task, inner) for m in self.members]
        indices, scores = fuse([r.indices[:, :self.depth] for r in runs], self.k, ctx.top_k)
        run = Run(query_ids=runs[0].query_ids, corpus_ids=runs[0].corpus_ids, indices=indices, scores=scores)
        subsets = [r.subset_indices for r in runs if r.subset_indices is not None]
        if len(subsets) == len(runs):
            si, ss = fuse(subsets, self.k, subsets[0].shape[1])
            run = replace(run, subset_indices=si, subset_scores=ss)
        return run


def _factory(*, models: str, k: int = 60, depth: int = 100, device: str = "cpu") -> ReciprocalRankFusion:
    from cirbench.models.registry import get_model

    names = [m.strip() for m in str(models).split(",") if m.strip()]
    if len(names) < 2:
        raise ValueError(f"rrf needs at least two models (models=a,b), got {models!r}")
    if int(k) < 0 or int(depth) < 1:
        raise ValueError(f"rrf needs k >= 0 and depth >= 1, got k={k!r}, depth={depth!r}")
    extra: dict[str, Any] = {} if device == "cpu" else {"device": device}
    return ReciprocalRankFusion([Dense(get_model(n, **extra)) for n in names], k=int(k), depth=int(depth))


register_retriever(SPEC, _factory)
