"""Per-query cases: what a model returned for each query, next to what it should have returned.

A Case joins three things cirbench already writes or loads: the run (`run.parquet`: ranked ids, scores, the
rank of the first relevant item in the full ranking), the task (query text, reference image, targets, hard
negatives, categories) and, for `--vs`, a second run over the same queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cirbench.core.result import Result
from cirbench.core.run import read_run_table
from cirbench.core.types import DatasetError, Task


@dataclass(frozen=True)
class Hit:
    """One returned gallery item at its rank."""

    id: str
    rank: int
    score: float
    target: bool = False
    hard_negative: bool = False
    reference: bool = False
    """The query's own reference image (returned because the protocol keeps it in the gallery)."""


@dataclass(frozen=True)
class Answer:
    """One model's answer to one query."""

    model: str
    hits: tuple[Hit, ...]
    first_target_rank: int | None
    """1-based rank of the best target in the full ranking; None when no target was ranked."""
    success: bool


@dataclass
class Case:
    query_id: str
    text: str
    reference_id: str | None
    category: str | None
    subcategory: str | None
    target_ids: tuple[str, ...]
    hard_negative_ids: tuple[str, ...]
    answers: list[Answer] = field(default_factory=list)

    @property
    def worst_rank(self) -> float:
        """How badly the query failed (inf: no target found at all); the page sorts by it, worst first."""
        ranks = [a.first_target_rank for a in self.answers]
        return max(math.inf if r is None else float(r) for r in ranks)

    @property
    def gap(self) -> float:
        """For two answers: how far apart their first-target ranks are (log scale); 0 for one answer."""
        if len(self.answers) < 2:
            return 0.0
        a, b = (math.inf if x.first_target_rank is None else x.first_target_rank for x in self.answers[:2])
        if math.isinf(a) and math.isinf(b):
            return 0.0
        return math.inf if math.isinf(a) or math.isinf(b) else abs(math.log(a) - math.log(b))

    def search_text(self) -> str:
        parts = (self.query_id, self.text, self.category, self.subcategory, self.reference_id)
        return " ".join(p for p in parts if p).lower()


@dataclass(frozen=True)
class Filters:
    """The page's filters, also on the command line (there they choose the cases of page and sheet)."""

    failures_only: bool = False
    category: str | None = None
    subcategory: str | None = None
    rank_min: int | None = None
    rank_max: int | None = None
    """Bounds on the first-target rank of any answer; a query whose target was not found has rank inf."""
    search: str = ""

    def keep(self, case: Case) -> bool:
        if self.failures_only and all(a.success for a in case.answers):
            return False
        if self.category is not None and case.category != self.category:
            return False
        if self.subcategory is not None and case.subcategory != self.subcategory:
            return False
        ranks = [math.inf if a.first_target_rank is None else a.first_target_rank for a in case.answers]
        lo = -math.inf if self.rank_min is None else self.rank_min
        hi = math.inf if self.rank_max is None else self.rank_max
        if not any(lo <= r <= hi for r in ranks):
            return False
        return not self.search or self.search.lower() in case.search_text()


def answers(result: Result, task: Task, *, top: int, success_at: int) -> dict[str, Answer]:
    """query id -> the model's Answer, from the result's run.parquet and the task's labels."""
    path = result.run_path()
    if path is None:
        raise DatasetError("the result names no run file (files.run)", file=result.path, field="files")
    table = read_run_table(path)
    cols = {c: table.column(c).to_pylist() for c in ("query_id", "ranked_ids", "scores")}
    first = (table.column("first_relevant_rank").to_pylist()
             if "first_relevant_rank" in table.column_names else None)
    queries = {q.id: q for q in task.queries}
    name = str(result.model.get("name"))
    out: dict[str, Answer] = {}
    for i, qid in enumerate(cols["query_id"]):
        q = queries.get(qid)
        if q is None:
            raise DatasetError(f"query {qid!r} of the run is not in task {task.name!r} as loaded here "
                               "(another dataset revision? pass --data-dir)", file=path, record=qid,
                               field="query_id")
        targets, negatives = set(q.relevant_ids), set(q.hard_negative_ids)
        ranked, scores = cols["ranked_ids"][i] or [], cols["scores"][i] or []
        hits = tuple(Hit(id=cid, rank=r, score=float(s), target=cid in targets,
                         hard_negative=cid in negatives, reference=cid == q.reference_id)
                     for r, (cid, s) in enumerate(zip(ranked[:top], scores[:top]), start=1))
        rank: int | None
        if first is not None and first[i]:
            rank = int(first[i])
        else:  # no full-ranking rank stored: the rank within the stored top-K, if a target is there
            rank = next((r for r, cid in enumerate(ranked, start=1) if cid in targets), None)
        out[qid] = Answer(model=name, hits=hits, first_target_rank=rank,
                          success=rank is not None and rank <= success_at)
    return out


def build_cases(task: Task, runs: Sequence[dict[str, Answer]]) -> list[Case]:
    """One Case per query present in every run, in task order."""
    out = []
    for q in task.queries:
        if not all(q.id in r for r in runs):
            continue
        out.append(Case(query_id=q.id, text=q.item.text or "", reference_id=q.reference_id,
                        category=q.category, subcategory=q.subcategory, target_ids=tuple(q.relevant_ids),
                        hard_negative_ids=tuple(q.hard_negative_ids), answers=[r[q.id] for r in runs]))
    return out


def disagreements(cases: Sequence[Case]) -> list[Case]:
    """The queries where exactly one of two models succeeds (the `--vs` view)."""
    return [c for c in cases if len(c.answers) == 2 and c.answers[0].success != c.answers[1].success]


def sample(cases: Sequence[Case], n: int | None, seed: int) -> list[Case]:
    """At most n cases, drawn uniformly without replacement (seeded), kept in their order."""
    if n is None or len(cases) <= n:
        return list(cases)
    keep = np.sort(np.random.default_rng(seed).choice(len(cases), size=n, replace=False))
    return [cases[int(i)] for i in keep]


def worst_first(cases: Sequence[Case]) -> list[Case]:
    """Sorted by how badly the query failed: not found first, then by the first target's rank (deepest
    first); for two models by how far apart they are. Ties keep task order."""
    return sorted(cases, key=lambda c: (-c.gap, -c.worst_rank))
