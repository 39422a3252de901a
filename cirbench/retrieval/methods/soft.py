"""SoFT, the full method (Jung et al., arXiv 2512.20781; code `jjungyujin/SoFT`): CIReVL as the base
retrieval, a vision LMM that turns each query into dual constraints, and the soft filter over the top-K.

1. CIReVL: caption -> LLM rewrite -> text feature vs gallery images (`cirevl.py`, unchanged).
2. Constraints: one vision-LMM call per query (the modification text, then the reference image) returns
   `keep` / `add` / `remove` lists and a prescriptive (must-have) and a proscriptive (must-avoid) caption.
   They are artifacts like CIReVL's captions and rewrites (keyed by the LMM's fingerprint, the prompt's
   SHA-256, the decoding, the per-item seed and the query's content), or a released constraints file
   imported read-only with its provenance (`imports.constraints`, any layout `load_constraints` reads).
3. The soft filter (`cirbench.retrieval.rerank.soft`): s the CIReVL cosine, r and p the cosines of the
   candidate's image vector with the prescriptive and proscriptive captions (same CLIP), and
   final = (1 - λ)·s + λ·s·(r + 1 - p)/2, λ = 1 by default. The head of `depth` ids is re-ordered and the
   rest follows the tail rule; `depth: all` (the default) re-ranks the whole gallery, as SoFT does.

Named deviations: the released `baseline/cirevl_with_soft.py` soft-filters FashionIQ only (CIRR and CIRCO
fall through to CIReVL's own scoring); `filter_tasks: fashioniq` reproduces that, and the default `all`
filters every task, as the paper describes. A reply without the JSON object falls back to no constraint
(r = p = 0, which keeps the base order), as the released code does after its retries; the count is
recorded as `parse_fallbacks`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cirbench.core.options import did_you_mean
from cirbench.core.run import Run
from cirbench.core.types import Item, Task
from cirbench.llm.base import LMM, LMMError, LMMRequest
from cirbench.retrieval.base import ComponentSpec, Context, rerank_head
from cirbench.retrieval.dense import search_task
from cirbench.retrieval.methods.artifacts import ArtifactJob, ArtifactSpec, ArtifactStore, ImportedArtifacts
from cirbench.retrieval.methods.cirevl import CIReVL
from cirbench.retrieval.methods.common import (
    StageReport,
    _charge,
    artifact_component,
    image_bytes,
    lmm_record,
    open_store,
)
from cirbench.retrieval.methods.components import Decoding, usage
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt
from cirbench.retrieval.rerank.soft import (
    Constraint,
    caption_table,
    check_mode,
    constraint_from_reply,
    constraint_of,
    constraint_value,
    rerank_run,
    scores_from_vectors,
    soft_protocol,
)

FILTER_TASKS = ("all", "fashioniq")
"""`all`: the soft filter on every task (the paper); `fashioniq`: on FashionIQ only (the released code)."""
MOD_TEXT = "{mod_text}"

SPEC = ComponentSpec(
    name="soft",
    description="SoFT: CIReVL, then vision-LMM dual constraints and the soft filter over the top-K",
    options={
        "components.encoder / captioner / rewriter": "as cirevl's (the base retrieval)",
        "components.constrainer": "mapping, required: the vision LMM {backend: openai|local|replay, ...}",
        "prompts.constraints": "str, soft-constraints: the constraint prompt ({mod_text} marks the text)",
        "decoding.constraints": "mapping, {max_tokens: 512, temperature: 0}: the released temperature",
        "options.lambda": "float in [0, 1], 1.0: weight of the constraint term (SoFT's default)",
        "options.mode": "soft|reward|penalty|penalty-as-coded, soft: the filter's formula",
        "options.depth": "'all' or an int, all: how many of each query's top ids are re-ranked",
        "options.filter_tasks": "all|fashioniq, all: fashioniq is the released code's behaviour",
        "options.allow_missing": "bool, false: a query without imported constraints keeps r = p = 0",
        "imports.constraints": "{file, provenance}: a released constraints file (JSON/JSONL by query id)",
    },
)


def check_filter(*, lam: float = 1.0, mode: str = "soft", filter_tasks: str = "all",
                 depth: int | None = None, **_: Any) -> None:
    """Refuse bad filter options before any model loads (one line naming the option)."""
    try:
        check_mode(mode, float(lam))
    except ValueError as e:
        raise ValueError(f"options.mode / options.lambda: {e}") from None
    if filter_tasks not in FILTER_TASKS:
        raise ValueError(f"options.filter_tasks: {filter_tasks!r} is not one of "
                         f"{', '.join(FILTER_TASKS)}{did_you_mean(filter_tasks, FILTER_TASKS)}")
    if depth is not None and depth < 1:
        raise ValueError(f"options.depth must be 'all' or an integer >= 1, not {depth!r}")


def constraint_request(prompt: Prompt, instruction: str, image: bytes, decoding: Decoding,
                       seed: int | None) -> LMMRequest:
    """The text (with the modification text at `{mod_text}`, else appended) and then the reference image."""
    quoted = instruction.replace('"', "'")
    if MOD_TEXT in prompt.text:
        text = prompt.text.replace(MOD_TEXT, quoted)
    else:
        text = f'{prompt.text}\nModification text: "{quoted}"\nReference image:'
    return LMMRequest(parts=(text, image), system=prompt.system, max_tokens=decoding.max_tokens,
                      temperature=decoding.temperature, top_p=decoding.top_p, json_mode=True, seed=seed)


@dataclass
class SoFT(CIReVL):
    """A Retriever: CIReVL's run, re-ranked by the soft filter with per-query LMM constraints."""

    constrainer: LMM | None = None
    constraint_prompt: Prompt = field(default_factory=lambda: BUILTIN["soft-constraints"])
    constraint_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=512))
    imported_constraints: ImportedArtifacts | None = None
    lam: float = 1.0
    mode: str = "soft"
    depth: int | None = None
    """Ids re-ranked per query; None: the whole gallery."""
    filter_tasks: str = "all"
    allow_missing: bool = False
    name: str = "soft"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_filter(lam=self.lam, mode=self.mode, filter_tasks=self.filter_tasks, depth=self.depth)
        if self.constrainer is None and self.imported_constraints is None:
            raise ValueError("soft needs a vision LMM (components.constrainer) or imported constraints "
                             "(imports.constraints)")
        if self.constraint_decoding.n != 1:
            raise ValueError("soft makes one constraint set per query (decoding.constraints.n: 1)")
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)

    def applies_to(self, task: Task) -> bool:
        return self.filter_tasks == "all" or task.name.split(":")[0].split("-")[0] == "fashioniq"

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["method"] = "soft"
        fp["constrainer"] = lmm_record(self.constrainer) if self.constrainer else None
        fp["prompts"]["constraints"] = self.constraint_prompt.record()
        fp["decoding"]["constraints"] = self.constraint_decoding.record()
        imp = self.imported_constraints
        fp["imports"]["constraints"] = imp.record() if imp else None
        fp["filter"] = {"lambda": float(self.lam), "mode": self.mode, "depth": self.depth or "all",
                        "filter_tasks": self.filter_tasks, "allow_missing": self.allow_missing}
        return fp

    def _depth(self, task: Task, ctx: Context) -> int:
        """The search depth of the base run: the whole gallery for `depth: all`, at least the eval's."""
        if self.depth is None:
            return max(ctx.top_k, len(task.corpus))
        return max(ctx.top_k, int(self.depth))

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        out = super().describe(task, ctx)
        method = out["method"]
        method["kind"] = "soft"
        applied = self.applies_to(task)
        method["soft_filter"] = {
            "applied": applied,
            "filter_tasks": self.filter_tasks,
            "depth_option": self.depth or "all",
            **soft_protocol(lam=self.lam, mode=self.mode,
                            depth=min(self._depth(task, ctx) if self.depth is None else self.depth,
                                      len(task.corpus)),
                            constraints=self.imported_constraints.path if self.imported_constraints else None,
                            subset=applied),
            "constraint_prompt": self.constraint_prompt.record(),
            "tail_rule": "ids below the depth keep CIReVL's order and scores, after the re-ranked head",
        }
        return out

    # ------------------------------------------------------------------------------------------ stages

    def constraints(self, task: Task, ctx: Context, store: ArtifactStore,
                    reports: dict[str, StageReport]) -> dict[str, Constraint]:
        """query id -> its constraints: imported, or asked of the vision LMM once per query (cached)."""
        stage = "constraints"
        if self.imported_constraints is not None:
            imp = self.imported_constraints
            reports[stage] = StageReport(stage, "", len(task.queries), 0, imp.record())
            out = {}
            for q in task.queries:
                if q.id in imp.values:
                    out[q.id] = constraint_of(q.id, imp.values[q.id])
                elif not self.allow_missing:
                    imp.get(q.id)  # refused naming the file and the query
            return out
        lmm = self.constrainer
        assert lmm is not None
        prompt, decoding = self.constraint_prompt, self.constraint_decoding
        spec = ArtifactSpec(stage, artifact_component(lmm.fingerprint()), prompt.sha256, decoding.record(),
                            ctx.seed)
        report = reports.setdefault(stage, StageReport(stage, spec.namespace))
        by_id = {q.id: q for q in task.queries}

        def make(jobs: Sequence[ArtifactJob]) -> list[dict[str, Any]]:
            reqs = [constraint_request(prompt, by_id[j.id].item.text or "", image_bytes(by_id[j.id].item),
                                       decoding, j.seed if decoding.sampling else None) for j in jobs]
            before = usage(lmm)
            with ctx.cost.timed(stage):
                replies = lmm.complete_many(reqs)
            _charge(ctx, stage, lmm, before, lmm_calls=len(reqs))
            report.generated += len(jobs)
            values = []
            for reply, job in zip(replies, jobs, strict=True):
                if isinstance(reply, LMMError):
                    raise LMMError(f"{stage} of {job.id!r}: {reply}", transient=reply.transient)
                c = constraint_from_reply(job.id, reply)
                if c is None:
                    ctx.cost.add(stage, parse_fallbacks=1)
                values.append({**constraint_value(c or Constraint(job.id)), "parsed": c is not None,
                               "reply": reply})
            return values

        items = [(q.id, _content(q.item.text or "", q.item)) for q in task.queries]
        got = store.generate(spec, items, make, batch_size=ctx.batch_size)
        report.items += len(got)
        return {qid: constraint_of(qid, v) for qid, v in got.items()}

    # ------------------------------------------------------------------------------------------ the run

    def retrieve(self, task: Task, ctx: Context) -> Run:
        reports: dict[str, StageReport] = {}
        applied = self.applies_to(task)
        with open_store(ctx, self.artifacts_dir) as store:
            edited = self.rewrites(task, ctx, store, reports)
            constraints = self.constraints(task, ctx, store, reports) if applied else {}
        qv = self.text_vectors([edited[q.id] for q in task.queries], ctx, "encoding edited descriptions")
        cv = self.gallery_vectors(task, ctx)
        with ctx.cost.timed("search"):
            run = search_task(task, qv, cv, self._depth(task, ctx) if applied else ctx.top_k, ctx)
        if applied:
            run = self.soft_filter(task, run, cv, constraints, ctx)
            run = replace(run, indices=run.indices[:, :ctx.top_k].copy(),
                          scores=run.scores[:, :ctx.top_k].copy())
        self.finish_cost(task, ctx, reports)
        return run

    def soft_filter(self, task: Task, run: Run, cv: np.ndarray, constraints: dict[str, Constraint],
                    ctx: Context) -> Run:
        """The head of `run` re-ranked by the soft filter (and the candidate subset, where there is one)."""
        texts, per_query = caption_table(constraints, run.query_ids, allow_missing=True)
        self.encoding["soft"] = {"queries_without_constraints": sum(1 for q in run.query_ids
                                                                    if q not in constraints),
                                 "constraint_captions": len(texts)}
        tv = (self.text_vectors(texts, ctx, "encoding SoFT constraint captions") if texts
              else np.zeros((0, cv.shape[1]), dtype=np.float32))
        pos = task.corpus_positions
        relevant = [[pos[c] for c in q.relevant_ids] for q in task.queries]

        def reorder(head: Run) -> Run:
            with ctx.cost.timed("soft_filter"):
                reward, penalty = scores_from_vectors(tv, per_query, cv, head.indices)
                subset = None
                if head.subset_indices is not None:
                    subset = scores_from_vectors(tv, per_query, cv, head.subset_indices)
                return rerank_run(head, reward, penalty, lam=self.lam, mode=self.mode,
                                  relevant=relevant if task.has_labels else None, subset=subset)

        return rerank_head(run, self.depth, reorder)


def _content(instruction: str, item: Item) -> str:
    """What a query's constraints depend on: its modification text and its reference image."""
    return hashlib.sha256(f"{instruction}\x00{Item(item.id, image=item.image).content_key()}".encode()
                          ).hexdigest()


__all__ = ["FILTER_TASKS", "SPEC", "SoFT", "check_filter", "constraint_request"]
