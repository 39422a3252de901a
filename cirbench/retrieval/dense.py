"""`Dense(encoder)`: the embedding-model retriever. Encode both sides (cached), then exact top-K search.

Queries with alternative phrasings and video targets with several frames are one vector each: the
(weighted) mean of their items' vectors, re-normalised. Each query is searched within its own gallery
(FashionIQ's categories), its reference and exclusions removed as the protocol says, and CIRR-style
candidate subsets get their own ranking from the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cirbench.core.cache import EmbeddingCache, default_cache_dir
from cirbench.core.metrics import parse_metric
from cirbench.core.run import Run
from cirbench.core.types import Item, Role, Task, query_exclusions
from cirbench.core.video import expand_corpus
from cirbench.models.base import Encoder, bind_task, check_modalities
from cirbench.retrieval import run_cache
from cirbench.retrieval.base import ComponentSpec, Context
from cirbench.retrieval.encode import encode_items, unit_vectors

SPEC = ComponentSpec(name="dense", description="one embedding model: encode queries and gallery (cached), "
                     "exact inner-product top-K")
TIE_BREAK = "score desc, then corpus position asc"


def resolve_instruction(encoder: Encoder, task: Task, role: Role) -> str | None:
    """Model's instruction for this task, else the task's default, else the model's generic default."""
    spec_inst = encoder.spec.default_instructions
    return spec_inst.get(f"{task.name}:{role}") or task.metadata.instructions.get(role) or spec_inst.get(role)


def query_items(task: Task) -> tuple[list[Item], list[list[int]]]:
    """All query-side Items (main + alternatives, text template applied) and, per query, their rows."""
    template = task.protocol.text_template
    items: list[Item] = []
    rows: list[list[int]] = []
    for q in task.queries:
        group = []
        for it in (q.item, *q.alt_items):
            text = template.format(text=it.text) if it.text is not None else None
            group.append(len(items))
            items.append(replace(it, text=text))
        rows.append(group)
    return items, rows


def encode(encoder: Encoder, items: list[Item], role: Role, instruction: str | None, ctx: Context,
           label: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors of `items` through the embedding cache (when the context uses one) and encode stats."""
    cache = None
    if ctx.use_cache:
        root = ctx.cache_dir if ctx.cache_dir else default_cache_dir()
        cache = EmbeddingCache(root, {"model": encoder.fingerprint(), "role": role,
                                      "instruction": instruction})
    return encode_items(encoder, items, role=role, instruction=instruction, cache=cache,
                        batch_size=ctx.batch_size, workers=ctx.workers, progress=ctx.progress,
                        description=label)


def mean_vectors(vecs: np.ndarray, rows: list[list[int]], weights: list[list[float]] | None = None,
                 *, normalise: bool = True) -> np.ndarray:
    """One vector per group of rows: the (weighted) mean, re-normalised unless `normalise` is False (an
    encoder without unit vectors) (query phrasings, video frames)."""
    if all(len(r) == 1 for r in rows):
        return vecs[[r[0] for r in rows]]
    out = np.stack([np.average(vecs[r], axis=0, weights=None if weights is None else weights[i])
                    for i, r in enumerate(rows)])
    if not normalise:
        return out.astype(np.float32, copy=False)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def subset_depth(task: Task) -> int:
    """How deep a candidate-subset ranking goes: the largest R_s@K the protocol reports (at least 3)."""
    return max([3] + [parse_metric(m).k or 0 for m in task.protocol.metrics
                      if parse_metric(m).kind == "recall_subset"])


def search_task(task: Task, qv: np.ndarray, cv: np.ndarray, k: int, ctx: Context) -> Run:
    """Exact top-k per query within its gallery, reference/exclusions removed per the protocol; a CPU
    search under the cache is read from `run_cache` when it was computed before (no torch import)."""
    root = (ctx.cache_dir or default_cache_dir()) if ctx.use_cache and ctx.device == "cpu" else None
    key = None
    if root is not None:
        key = run_cache.search_key(task, qv, cv, k, subset_depth=subset_depth(task), dtype=ctx.search_dtype,
                                   backend=ctx.search_backend)
        cached = run_cache.load(Path(root), key, task, k)
        if cached is not None:
            return cached
    run = _search(task, qv, cv, k, ctx)
    if root is not None and key is not None:
        run_cache.store(Path(root), key, run)
    return run


def _search(task: Task, qv: np.ndarray, cv: np.ndarray, k: int, ctx: Context) -> Run:
    from cirbench.retrieval.search import exact_search, subset_search  # torch: only when searching

    pos = task.corpus_positions
    excl = query_exclusions(task)
    relevant = [[pos[c] for c in q.relevant_ids] for q in task.queries]
    nq = len(task.queries)
    indices = np.full((nq, k), -1, dtype=np.int64)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    first = np.zeros(nq, dtype=np.int64)
    groups: dict[str | None, list[int]] = {}
    for i, q in enumerate(task.queries):
        groups.setdefault(q.gallery, []).append(i)
    for gallery, qidx in groups.items():
        if gallery is None:
            gpos = np.arange(len(task.corpus))
        else:
            assert task.galleries is not None
            gpos = np.asarray(sorted(pos[c] for c in task.galleries[gallery]), dtype=np.int64)
        local = {int(p): j for j, p in enumerate(gpos)}
        res = exact_search(qv[qidx], cv[gpos], k,
                           exclude=[[local[p] for p in excl[i] if p in local] for i in qidx],
                           relevant=[[local[p] for p in relevant[i] if p in local] for i in qidx],
                           dtype=ctx.search_dtype, device=ctx.device, backend=ctx.search_backend,
                           progress=ctx.progress)
        kk = res.indices.shape[1]
        indices[qidx, :kk] = np.where(res.indices >= 0, gpos[np.maximum(res.indices, 0)], -1)
        scores[qidx, :kk] = res.scores
        if res.first_relevant_rank is not None:
            first[qidx] = res.first_relevant_rank
    run = Run(query_ids=[q.id for q in task.queries], corpus_ids=[it.id for it in task.corpus],
              indices=indices, scores=scores, first_relevant_rank=first if task.has_labels else None)
    if any(q.candidate_ids is not None for q in task.queries):
        sub = subset_search(qv, cv, [[pos[c] for c in (q.candidate_ids or ())] for q in task.queries],
                            subset_depth(task), exclude=excl)
        run = replace(run, subset_indices=sub.indices, subset_scores=sub.scores)
    return run


@dataclass
class Dense:
    """Today's flow as a Retriever: one Encoder for both sides, exact search over its vectors."""

    encoder: Encoder
    spec: ComponentSpec = SPEC
    encoding: dict[str, Any] = field(default_factory=dict)
    """The last retrieve's encode statistics per role (cache hits, rejected cache parts, ...)."""

    def fingerprint(self) -> dict[str, Any]:
        return {"retriever": "dense", "model": self.encoder.fingerprint()}

    def prepare(self, task: Task) -> Task:
        """Refuse a model that cannot embed a side of the task; let the encoder adapt the task's inputs."""
        check_modalities(self.encoder.spec, {"query": task.metadata.query_modality,
                                             "corpus": task.metadata.corpus_modality})
        self.encoder, task = bind_task(self.encoder, task)
        return task

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        """What the result's protocol records about how the run is made (known before any encoding)."""
        c_rows = expand_corpus(task)[1]
        rows = query_items(task)[1]
        return {
            "instructions": {"query": resolve_instruction(self.encoder, task, "query"),
                             "document": resolve_instruction(self.encoder, task, "document")},
            "search": {"top_k": ctx.top_k, "dtype": ctx.search_dtype, "backend": ctx.search_backend,
                       "tie_break": TIE_BREAK},
            "query_vector": "mean of main + alternative phrasings" if any(len(r) > 1 for r in rows)
            else "single item",
            "corpus_vector": "mean of its frames' vectors" if any(len(r) > 1 for r in c_rows)
            else "single item",
            **({} if unit_vectors(self.encoder) else
               {"vectors": "as the encoder returns them: not L2-normalised, inner product over their "
                           "lengths"}),
        }

    def corpus_vectors(self, task: Task, ctx: Context) -> np.ndarray:
        """One vector per gallery item (frames averaged), computed once per eval and kept in the context,
        so a reranker that scores the same gallery with the same model does not encode it again."""
        key = ("corpus", id(task), repr(sorted(self.fingerprint().items(), key=str)))
        if key not in ctx.vectors:
            c_items, c_rows, c_weights = expand_corpus(task)
            vecs, self.encoding["document"] = encode(
                self.encoder, c_items, "document", resolve_instruction(self.encoder, task, "document"), ctx,
                "encoding gallery")
            ctx.vectors[key] = mean_vectors(vecs, c_rows, c_weights, normalise=unit_vectors(self.encoder))
        return ctx.vectors[key]

    def query_vectors(self, task: Task, ctx: Context) -> np.ndarray:
        items, rows = query_items(task)
        vecs, self.encoding["query"] = encode(self.encoder, items, "query",
                                              resolve_instruction(self.encoder, task, "query"), ctx,
                                              "encoding queries")
        return mean_vectors(vecs, rows, normalise=unit_vectors(self.encoder))

    def retrieve(self, task: Task, ctx: Context) -> Run:
        cv = self.corpus_vectors(task, ctx)
        qv = self.query_vectors(task, ctx)
        with ctx.cost.timed("search"):
            return search_task(task, qv, cv, ctx.top_k, ctx)
