"""SoFT soft filtering: re-rank a Run's top-K with prescriptive (must-have) and proscriptive (must-avoid)
captions.

Jung et al., "Soft Filtering: Guiding Zero-shot CIR with Prescriptive and Proscriptive Constraints"
(arXiv 2512.20781); code `jjungyujin/SoFT` (`src/compute_results.py::fiq`). An LMM turns each query (reference
image + modification text) into `keep` / `add` / `remove` attribute lists and two captions; this module reads
them from a file (the LMM backend is another module) and re-scores the candidates:

    s = the base retriever's score of candidate x (cosine of query and image vectors)
    r = cosine(prescriptive caption vector, x)     p = cosine(proscriptive caption vector, x)
    soft    final = (1 - λ)·s + λ·s·(r + 1 - p)/2   (SoFT's default; λ = 1 gives s·(1 + r - p)/2)
    reward  final = (1 - λ)·s + λ·s·r
    penalty final = (1 - λ)·s + λ·s·(1 - p)         (demotes candidates that match the must-avoid caption)
    penalty-as-coded  final = (1 - λ)·s + λ·s·p     (what SoFT's released script computes for "penalty")

Captions are embedded as text queries with no instruction (SoFT embeds them with CLIP's plain text tower
and matches them to the gallery's image vectors); every vector is L2-normalised; an empty caption gives r or
p = 0; several captions in one field are averaged. SoFT re-ranks the whole gallery; here the Run's top-K is
re-ranked, so run the search with K = the gallery size for parity (the depth is recorded).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import DatasetError, Item, Task
from cirbench.retrieval.base import ComponentSpec, Context, Retriever, rerank_head

if TYPE_CHECKING:
    from cirbench.core.cache import EmbeddingCache
    from cirbench.models.base import Encoder
    from cirbench.retrieval.methods.artifacts import ImportedArtifacts

MODES = ("soft", "reward", "penalty", "penalty-as-coded")
FORMULAS = {
    "soft": "(1 - lambda) * s + lambda * s * (r + 1 - p) / 2",
    "reward": "(1 - lambda) * s + lambda * s * r",
    "penalty": "(1 - lambda) * s + lambda * s * (1 - p)",
    "penalty-as-coded": "(1 - lambda) * s + lambda * s * p",
}
SOURCE = "jjungyujin/SoFT src/compute_results.py::fiq (arXiv 2512.20781)"


@dataclass(frozen=True)
class Constraint:
    """SoFT's dual constraints for one query: the attribute lists and the two captions built from them."""

    query_id: str
    prescriptive: tuple[str, ...] = ()
    """Must-have caption(s), written from the `keep` and `add` lists; several are averaged."""
    proscriptive: tuple[str, ...] = ()
    """Must-avoid caption(s): the reference described through its `remove` attributes."""
    keep: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "prescriptive": list(self.prescriptive),
                "proscriptive": list(self.proscriptive), "keep": list(self.keep), "add": list(self.add),
                "remove": list(self.remove)}


# ------------------------------------------------------------------------------------------------------
# Reading constraints
# ------------------------------------------------------------------------------------------------------


def load_constraints(path: str | os.PathLike[str]) -> dict[str, Constraint]:
    """Constraints keyed by query id, from JSON or JSONL (`.jsonl` / `.ndjson`).

    Accepted layouts: a JSON object {query id: record}; a JSON list of records; JSONL, one record a line.
    A record in a list or JSONL names its query in `query_id` (or `id`). A record is flat
    (`prescriptive`, `proscriptive`, `keep`, `add`, `remove`) or SoFT's LMM output
    (`{"attributes": {keep, add, remove}, "queries": {prescriptive_query, proscriptive_query}}`).
    Captions are a string, a list of strings or null; attribute lists are lists of strings or null.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DatasetError("constraints file is missing", file=path) from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"constraints file is not UTF-8 text: {e}", file=path) from e
    records: list[tuple[str | int, Any, str | None]] = []  # (where, record, key id)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {n}", json.loads(line), None))
            except json.JSONDecodeError as e:
                raise DatasetError(f"malformed JSON: {e.msg}", file=path, record=f"line {n}") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"malformed JSON: {e}", file=path) from e
        if isinstance(data, dict):
            records = [(str(k), v, str(k)) for k, v in data.items()]
        elif isinstance(data, list):
            records = [(i, v, None) for i, v in enumerate(data)]
        else:
            raise DatasetError("expected a JSON object keyed by query id or a list of records, "
                               f"found {type(data).__name__}", file=path)
    out: dict[str, Constraint] = {}
    for where, rec, key in records:
        c = _constraint(rec, key, path, where)
        if c.query_id in out:
            raise DatasetError("duplicate query id", file=path, record=c.query_id, field="query_id")
        out[c.query_id] = c
    if not out:
        raise DatasetError("constraints file holds no constraints", file=path)
    return out


def _constraint(rec: Any, key: str | None, path: Path, where: str | int) -> Constraint:
    if not isinstance(rec, dict):
        raise DatasetError(f"a constraint record must be a JSON object, found {type(rec).__name__}",
                           file=path, record=where)
    qid = key if key is not None else rec.get("query_id", rec.get("id"))
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid:
        raise DatasetError("query id is missing or not a string", file=path, record=where, field="query_id")
    queries = _sub(rec, "queries", path, qid)
    attributes = _sub(rec, "attributes", path, qid)

    def field(names: tuple[str, ...], sub: Mapping[str, Any], caption: bool) -> tuple[str, ...]:
        for name in names:
            for src in (rec, sub):
                if name in src:
                    return _strings(src[name], path, qid, name, caption)
        return ()

    return Constraint(
        query_id=qid,
        prescriptive=field(("prescriptive", "prescriptive_query"), queries, True),
        proscriptive=field(("proscriptive", "proscriptive_query"), queries, True),
        keep=field(("keep",), attributes, False),
        add=field(("add",), attributes, False),
        remove=field(("remove",), attributes, False),
    )


def _sub(rec: Mapping[str, Any], name: str, path: Path, qid: str) -> Mapping[str, Any]:
    value = rec.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DatasetError(f"must be an object, found {type(value).__name__}", file=path, record=qid,
                           field=name)
    return value


def _strings(value: Any, path: Path, qid: str, name: str, caption: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) and caption:
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        kind = "a string, a list of strings or null" if caption else "a list of strings or null"
        raise DatasetError(f"must be {kind}", file=path, record=qid, field=name)
    return tuple(value)


# ------------------------------------------------------------------------------------------------------
# Scoring and re-ranking
# ------------------------------------------------------------------------------------------------------


def check_mode(mode: str, lam: float) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown SoFT mode {mode!r}; choose one of {MODES}")
    if not 0.0 <= lam <= 1.0 or lam != lam:
        raise ValueError(f"lambda must be in [0, 1], got {lam!r}")


def soft_scores(scores: np.ndarray, reward: np.ndarray, penalty: np.ndarray, *, lam: float = 1.0,
                mode: str = "soft") -> np.ndarray:
    """Final scores (float64, same shape) by the formula of `mode` (see FORMULAS)."""
    check_mode(mode, lam)
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    p = np.asarray(penalty, dtype=np.float64)
    if not s.shape == r.shape == p.shape:
        raise ValueError(f"scores {s.shape}, reward {r.shape} and penalty {p.shape} must have one shape")
    if mode == "soft":
        term = s * (r + 1.0 - p) / 2.0
    elif mode == "reward":
        term = s * r
    elif mode == "penalty":
        term = s * (1.0 - p)
    else:
        term = s * p
    return (1.0 - lam) * s + lam * term


def rerank_topk(indices: np.ndarray, scores: np.ndarray, reward: np.ndarray, penalty: np.ndarray, *,
                lam: float = 1.0, mode: str = "soft") -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row of a (Q,K) top-K by its final score, best first.

    Ties keep the incoming order (a stable sort), which is the search's own tie-break (score desc, then
    corpus position asc), so the output is deterministic. Padding (-1) stays at the end with score -inf.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"indices must be (Q, K), got shape {idx.shape}")
    valid = idx >= 0
    r = np.where(valid, np.asarray(reward, dtype=np.float64), 0.0)
    p = np.where(valid, np.asarray(penalty, dtype=np.float64), 0.0)
    s = np.where(valid, np.asarray(scores, dtype=np.float64), 0.0)
    if not (np.isfinite(r).all() and np.isfinite(p).all() and np.isfinite(s).all()):
        raise ValueError("scores, reward and penalty must be finite for every candidate")
    final = np.where(valid, soft_scores(s, r, p, lam=lam, mode=mode), -np.inf)
    order = np.argsort(-final, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(final, order, axis=1)


def rerank_run(run: Run, reward: np.ndarray, penalty: np.ndarray, *, lam: float = 1.0, mode: str = "soft",
               relevant: Sequence[Sequence[int]] | None = None,
               subset: tuple[np.ndarray, np.ndarray] | None = None) -> Run:
    """A new Run with the top-K (and, given `subset` = its (reward, penalty), the subset ranking) re-ranked.

    Scores become the final scores. `first_relevant_rank` (the rank in the full ranking, used by MRR/MedR)
    is recomputed from `relevant` (corpus positions per query) for queries whose first hit is in the top-K;
    deeper ranks are unchanged because the tail is not re-ranked. Without `relevant` it is dropped, so MRR
    and MedR then come from the re-ranked top-K alone. Without `subset` the subset ranking is kept as is.
    """
    indices, scores = rerank_topk(run.indices, run.scores, reward, penalty, lam=lam, mode=mode)
    out = replace(run, indices=indices, scores=scores.astype(np.float32))
    if subset is not None:
        if run.subset_indices is None or run.subset_scores is None:
            raise ValueError("subset reward/penalty given, but the run has no subset ranking")
        si, ss = rerank_topk(run.subset_indices, run.subset_scores, subset[0], subset[1], lam=lam, mode=mode)
        out.subset_indices, out.subset_scores = si, ss.astype(np.float32)
    if run.first_relevant_rank is not None:
        out.first_relevant_rank = (None if relevant is None else
                                   _first_ranks(indices, run.first_relevant_rank, relevant))
    return out


def _first_ranks(indices: np.ndarray, old: np.ndarray, relevant: Sequence[Sequence[int]]) -> np.ndarray:
    if len(relevant) != indices.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} queries but the run has {indices.shape[0]}")
    depth = indices.shape[1]
    new = np.asarray(old, dtype=np.int64).copy()
    for q, rel in enumerate(relevant):
        if 0 < new[q] <= depth:
            hits = np.flatnonzero(np.isin(indices[q], np.asarray(list(rel), dtype=np.int64)))
            new[q] = int(hits[0]) + 1 if hits.size else 0
    return new


def soft_protocol(*, lam: float, mode: str, depth: int, instruction: str | None = None,
                  constraints: str | os.PathLike[str] | None = None, subset: bool = False) -> dict[str, Any]:
    """What to record in the Result's protocol so a re-ranked score is never mistaken for a plain one."""
    check_mode(mode, lam)
    return {
        "rerank": "soft",
        "mode": mode,
        "lambda": float(lam),
        "formula": FORMULAS[mode],
        "depth": int(depth),
        "reward": "mean cosine of the candidate's image vector and the prescriptive caption(s); 0 if empty",
        "penalty": "mean cosine of the candidate's image vector and the proscriptive caption(s); 0 if empty",
        "caption_role": "query",
        "caption_instruction": instruction,
        "subset": "re-ranked" if subset else "not re-ranked",
        "constraints": os.fspath(constraints) if constraints is not None else None,
        "source": SOURCE,
    }


# ------------------------------------------------------------------------------------------------------
# Reward and penalty from an encoder
# ------------------------------------------------------------------------------------------------------


def constraint_scores(encoder: Encoder, constraints: Mapping[str, Constraint], query_ids: Sequence[str],
                      corpus_vectors: np.ndarray, indices: np.ndarray, *, instruction: str | None = None,
                      allow_missing: bool = False, cache: EmbeddingCache | None = None, batch_size: int = 32,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(reward, penalty), each (Q,K) float32, for the candidates `indices` (corpus positions, -1 pads).

    Captions are encoded once each as text with role "query" and `instruction` (default none, as SoFT's
    plain CLIP text tower), then compared by cosine with the candidates' gallery vectors (role "document",
    the same vectors the search used). A query absent from `constraints` is an error unless
    `allow_missing`, in which case it gets r = p = 0 (SoFT's fallback when the LMM fails).
    """
    from cirbench.models.base import check_modalities, l2_normalise
    from cirbench.retrieval.encode import encode_items

    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[0] != len(query_ids):
        raise ValueError(f"indices must be ({len(query_ids)}, K), got shape {idx.shape}")
    texts, per_query = caption_table(constraints, query_ids, allow_missing=allow_missing)
    if not texts:
        return np.zeros(idx.shape, dtype=np.float32), np.zeros(idx.shape, dtype=np.float32)
    check_modalities(encoder.spec, {"constraint captions": "text"})
    items = [Item(id=f"soft-caption-{i}", text=t) for i, t in enumerate(texts)]
    tv, _ = encode_items(encoder, items, role="query", instruction=instruction, cache=cache,
                         batch_size=batch_size, progress=progress, description="encoding SoFT captions")
    return scores_from_vectors(l2_normalise(tv), per_query, corpus_vectors, idx)


CaptionRefs = list[tuple[list[int], list[int]]]
"""Per query: the rows of its prescriptive and of its proscriptive captions in the caption table."""


def caption_table(constraints: Mapping[str, Constraint], query_ids: Sequence[str], *,
                  allow_missing: bool = False) -> tuple[list[str], CaptionRefs]:
    """The distinct non-empty captions (to encode once each) and, per query, which of them it uses.

    A query absent from `constraints` is an error unless `allow_missing` (then r = p = 0 for it)."""
    missing = [q for q in query_ids if q not in constraints]
    if missing and not allow_missing:
        raise DatasetError(f"{len(missing)} of {len(query_ids)} queries have no constraints, e.g. "
                           f"{missing[:5]}", record=missing[0], field="query_id")
    texts: dict[str, int] = {}
    per_query: CaptionRefs = []
    for q in query_ids:
        c = constraints.get(q, Constraint(q))
        pres = [texts.setdefault(t.strip(), len(texts)) for t in c.prescriptive if t.strip()]
        pros = [texts.setdefault(t.strip(), len(texts)) for t in c.proscriptive if t.strip()]
        per_query.append((pres, pros))
    return list(texts), per_query


def scores_from_vectors(caption_vectors: np.ndarray, per_query: CaptionRefs, corpus_vectors: np.ndarray,
                        indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reward, penalty), each (Q,K) float32: the mean cosine of each candidate's gallery vector with the
    query's prescriptive (reward) and proscriptive (penalty) caption vectors (unit rows of
    `caption_vectors`); 0 where a query has no caption of that kind or the candidate is a pad (-1)."""
    from cirbench.models.base import l2_normalise

    idx = np.asarray(indices, dtype=np.int64)
    reward = np.zeros(idx.shape, dtype=np.float32)
    penalty = np.zeros(idx.shape, dtype=np.float32)
    tv = np.asarray(caption_vectors, dtype=np.float32)
    cv = np.asarray(corpus_vectors)
    for row, (pres, pros) in enumerate(per_query):
        ok = idx[row] >= 0
        if not ok.any() or not (pres or pros):
            continue
        cand = l2_normalise(cv[idx[row][ok]])
        for caps, out in ((pres, reward), (pros, penalty)):
            if caps:
                out[row, ok] = (cand @ tv[caps].T).mean(axis=1)
    return reward, penalty


# ------------------------------------------------------------------------------------------------------
# Constraints from an LMM's reply, and released files as an import tier
# ------------------------------------------------------------------------------------------------------


def constraint_from_reply(query_id: str, reply: str) -> Constraint | None:
    """The constraints in an LMM's reply (SoFT's JSON: attributes {keep, add, remove} and queries
    {prescriptive_query, proscriptive_query}), or None when the reply holds no such JSON object.

    The JSON is found brace-balanced (`extract_json`: the whole reply, a fenced block or the outermost
    {...}); the released parser's non-greedy `\\{.*?\\}` cuts this nested object at its first '}'."""
    from cirbench.llm.base import extract_json

    try:
        obj = extract_json(reply)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    try:
        c = _constraint(obj, query_id, Path("<reply>"), query_id)
    except DatasetError:
        return None
    if not (c.prescriptive or c.proscriptive or c.keep or c.add or c.remove):
        return None
    return c


def constraint_value(c: Constraint) -> dict[str, Any]:
    """A Constraint as an artifact value (flat lists; the query id is the artifact's)."""
    d = c.to_dict()
    del d["query_id"]
    return d


def import_constraints(root: str | os.PathLike[str], rel: str | os.PathLike[str], *,
                       provenance: str) -> ImportedArtifacts:
    """A released constraints file (any layout `load_constraints` reads) as a read-only artifact import,
    recorded with its path, SHA-256 and the provenance the user declares. `rel` may not leave `root`."""
    import hashlib

    from cirbench.core.paths import Root
    from cirbench.retrieval.methods.artifacts import ImportedArtifacts

    if not provenance.strip():
        raise ValueError("an import needs its provenance (where the file was released, repo@commit)")
    path = Root(root, what="the artifact import folder").join(rel, field="path")
    constraints = load_constraints(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImportedArtifacts(path, digest, provenance.strip(),
                             {q: constraint_value(c) for q, c in constraints.items()})


def constraint_of(query_id: str, value: Mapping[str, Any]) -> Constraint:
    """An artifact value (constraint_value's dict) back as a Constraint."""
    return Constraint(query_id, **{k: tuple(value.get(k) or ()) for k in
                                   ("prescriptive", "proscriptive", "keep", "add", "remove")})


# ------------------------------------------------------------------------------------------------------
# The Reranker
# ------------------------------------------------------------------------------------------------------

OPTIONS = {
    "constraints": "path (required): the SoFT constraints file, JSON or JSONL keyed by query id",
    "lambda": "float in [0, 1], default 0.5: weight of the constraint term",
    "mode": f"one of {', '.join(MODES)}, default soft",
    "depth": "int, default the run's depth: how many of each query's top ids are re-ranked",
    "allow_missing": "bool, default false: a query without constraints keeps r = p = 0 (else an error)",
}


SPEC = ComponentSpec(name="soft", description="SoFT soft filtering with prescriptive and proscriptive "
                     "captions (jjungyujin/SoFT)", options=OPTIONS,
                     required=("constraints",))


@dataclass
class SoftReranker:
    """SoFT soft filtering as a Reranker: re-scores the head of a Run with the base retriever's model.

    The captions are embedded by the model of the retriever it follows (a `Dense` one), against the same
    gallery vectors the search used; `depth` ids are re-ranked and the rest keep the base order.
    """

    constraints: str | os.PathLike[str]
    lam: float = 0.5
    mode: str = "soft"
    depth: int | None = None
    allow_missing: bool = False
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    def __post_init__(self) -> None:
        try:
            check_mode(self.mode, float(self.lam))
        except ValueError as e:
            raise ValueError(f"reranker 'soft': {e} (--rerank-option lambda=..., mode=...)") from None
        if self.depth is not None and (isinstance(self.depth, bool) or int(self.depth) < 1):
            raise ValueError(f"soft depth must be an integer >= 1, not {self.depth!r}")

    def fingerprint(self) -> dict[str, Any]:
        return {"reranker": "soft", "lambda": float(self.lam), "mode": self.mode, "depth": self.depth,
                "constraints": os.fspath(self.constraints), "allow_missing": self.allow_missing}

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        depth = ctx.top_k if self.depth is None else min(int(self.depth), ctx.top_k)
        return soft_protocol(lam=self.lam, mode=self.mode, depth=depth, constraints=self.constraints)

    def rerank(self, task: Task, run: Run, ctx: Context, base: Retriever) -> Run:
        from cirbench.retrieval.dense import Dense

        if not isinstance(base, Dense):
            raise ValueError("--rerank soft follows a single-model retriever (--model): it embeds the "
                             "constraint captions with that model")
        constraints = load_constraints(self.constraints)
        cv = base.corpus_vectors(task, ctx)
        pos = task.corpus_positions
        relevant = [[pos[c] for c in q.relevant_ids] for q in task.queries]

        def reorder(head: Run) -> Run:
            with ctx.cost.timed("rerank-soft"):
                reward, penalty = constraint_scores(base.encoder, constraints, head.query_ids, cv,
                                                    head.indices, allow_missing=self.allow_missing,
                                                    progress=ctx.progress)
                return rerank_run(head, reward, penalty, lam=self.lam, mode=self.mode, relevant=relevant)

        return rerank_head(run, self.depth, reorder)


def _factory(*, constraints: str | os.PathLike[str], mode: str = "soft", depth: int | None = None,
             allow_missing: bool = False, **rest: Any) -> SoftReranker:
    lam = float(rest.pop("lambda", 0.5))
    return SoftReranker(constraints=constraints, lam=lam, mode=mode,
                        depth=None if depth is None else int(depth), allow_missing=bool(allow_missing))


