"""CIReVL (Karthik et al., ICLR 2024): caption the reference, let an LLM rewrite the caption per the
instruction, and retrieve gallery images with the text feature of the rewrite (no image on the query side).

The instruction is the task's query text as its protocol builds it: CIRR's relative caption, FashionIQ's
joined captions ("c1 and c2" under the c1-and-c2 protocol, which is CIReVL's), CIRCO's relative caption
alone (its default protocol; `--protocol shared-concept` is the shared-concept variant). The reference image
is excluded where the protocol says so (CIRR), since the search is the dense retriever's. The prompts are
cirbench's own wording (`prompts.py`), one per benchmark style; `--prompt-file rewrite=PATH` sends a
released one, and its SHA-256 is recorded either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cirbench.core.run import Run
from cirbench.core.types import Task
from cirbench.llm.base import LMM
from cirbench.retrieval.base import ComponentSpec, Context
from cirbench.retrieval.dense import search_task
from cirbench.retrieval.methods.artifacts import ImportedArtifacts
from cirbench.retrieval.methods.common import (
    StageReport,
    TextQueryMethod,
    caption_stage,
    lmm_record,
    open_store,
    parse_edited,
    rewrite_stage,
)
from cirbench.retrieval.methods.components import Captioner, Decoding
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt

DEFAULT_REWRITE_PROMPTS: Mapping[str, str] = {
    "cirr": "cirevl-contextual",
    "circo": "cirevl-structural",
    "fashioniq": "cirevl-structural-fashion",
    "default": "cirevl-contextual",
}
"""CIReVL's per-benchmark prompt styles (its run script: contextual for CIRR, structural for CIRCO,
structural-fashion for FashionIQ), as cirbench prompt ids."""

SPEC = ComponentSpec(
    name="cirevl",
    description="CIReVL: reference caption -> LLM rewrite -> text feature vs gallery image features",
    options={
        "components.encoder": "str, required: the dual encoder (a cirbench model name, e.g. hf-clip:...)",
        "components.captioner": "mapping, required: {kind: blip2, model: ...} or {kind: lmm, lmm: {...}}",
        "components.rewriter": "mapping, required: {backend: openai|local|replay, ...}",
        "prompts.caption": "str, caption-detailed: the captioner's prompt id",
        "prompts.rewrite": "str or {task: id, default: id}: the rewrite prompt per benchmark",
        "decoding.caption": "mapping, {max_tokens: 60}: the captioner's decoding",
        "decoding.rewrite": "mapping, {max_tokens: 700, temperature: 0}: the released code's values",
        "imports.captions / imports.rewrites": "{file, provenance[, id_field, value_field]}: released "
        "intermediates, read-only, by query id",
    },
)


@dataclass
class CIReVL(TextQueryMethod):
    """A Retriever: reference caption -> LLM rewrite -> text feature -> exact search over gallery images."""

    captioner: Captioner | None = None
    rewriter: LMM | None = None
    caption_prompt: Prompt = field(default_factory=lambda: BUILTIN["caption-detailed"])
    rewrite_prompts: Mapping[str, Prompt] = field(
        default_factory=lambda: {k: BUILTIN[v] for k, v in DEFAULT_REWRITE_PROMPTS.items()}
    )
    caption_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=60))
    rewrite_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=700))
    imported_captions: ImportedArtifacts | None = None
    imported_rewrites: ImportedArtifacts | None = None
    name: str = "cirevl"
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    def __post_init__(self) -> None:
        if self.captioner is None and self.imported_captions is None and self.imported_rewrites is None:
            raise ValueError("cirevl needs a captioner (components.captioner) or imported captions/rewrites")
        if self.rewriter is None and self.imported_rewrites is None:
            raise ValueError("cirevl needs a rewriter LMM (components.rewriter) or imported rewrites")
        if self.caption_decoding.n != 1 or self.rewrite_decoding.n != 1:
            raise ValueError("cirevl makes one caption and one rewrite per query (decoding n: 1)")
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)

    def rewrite_prompt(self, task: Task) -> Prompt:
        family = task.name.split(":")[0]
        for key in (task.name, family, family.split("-")[0], "default"):
            if key in self.rewrite_prompts:
                return self.rewrite_prompts[key]
        raise ValueError(f"no rewrite prompt for task {task.name!r} (and no 'default')")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "method": "cirevl",
            "encoder": self.clip.fingerprint(),
            "captioner": self.captioner.fingerprint() if self.captioner else None,
            "rewriter": lmm_record(self.rewriter) if self.rewriter else None,
            "prompts": {
                "caption": self.caption_prompt.record(),
                "rewrite": {k: p.record() for k, p in sorted(self.rewrite_prompts.items())},
            },
            "decoding": {
                "caption": self.caption_decoding.record(),
                "rewrite": self.rewrite_decoding.record(),
            },
            "imports": {
                "captions": self.imported_captions.record() if self.imported_captions else None,
                "rewrites": self.imported_rewrites.record() if self.imported_rewrites else None,
            },
        }

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        return {
            "method": {
                "name": self.name,
                "kind": "cirevl",
                "query": "text feature of the LLM's edited description of the reference caption (no image)",
                "instruction": "the task's query text per its protocol (alternative phrasings unused)",
                "rewrite_prompt": self.rewrite_prompt(task).record(),
                "search": {"top_k": ctx.top_k, "dtype": ctx.search_dtype, "backend": ctx.search_backend},
                **self.base_record(ctx),
            }
        }

    def captions(
        self, task: Task, ctx: Context, store: Any, reports: dict[str, StageReport]
    ) -> dict[str, str]:
        caps = caption_stage(
            task,
            self.captioner,
            self.caption_prompt,
            self.caption_decoding,
            store,
            ctx,
            stage="ref_caption",
            imported=self.imported_captions,
            reports=reports,
        )
        return {qid: c[0] for qid, c in caps.items()}

    def rewrites(
        self, task: Task, ctx: Context, store: Any, reports: dict[str, StageReport]
    ) -> dict[str, str]:
        if self.imported_rewrites is not None:
            imp = self.imported_rewrites
            reports["edited_caption"] = StageReport("edited_caption", "", len(task.queries), 0, imp.record())
            return {q.id: str(imp.get(q.id)) for q in task.queries}
        assert self.rewriter is not None
        caps = self.captions(task, ctx, store, reports)
        rows = [(q.id, caps[q.id], q.item.text or "") for q in task.queries]
        return rewrite_stage(
            rows,
            self.rewriter,
            self.rewrite_prompt(task),
            self.rewrite_decoding,
            store,
            ctx,
            stage="edited_caption",
            reports=reports,
        )

    def retrieve(self, task: Task, ctx: Context) -> Run:
        reports: dict[str, StageReport] = {}
        with open_store(ctx, self.artifacts_dir) as store:
            edited = self.rewrites(task, ctx, store, reports)
        qv = self.text_vectors([edited[q.id] for q in task.queries], ctx, "encoding edited descriptions")
        cv = self.gallery_vectors(task, ctx)
        with ctx.cost.timed("search"):
            run = search_task(task, qv, cv, ctx.top_k, ctx)
        self.finish_cost(task, ctx, reports)
        return run


__all__ = ["DEFAULT_REWRITE_PROMPTS", "SPEC", "CIReVL", "parse_edited"]
