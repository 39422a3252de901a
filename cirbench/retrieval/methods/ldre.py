"""LDRE (Yang et al., SIGIR 2024, `yzy-bupt/LDRE`): many sampled captions, one rewrite each, their mean.

1. `n_captions` (15) captions of the reference, sampled (nucleus sampling; each slot has its own seed,
   derived from the item, so the captions differ and reproduce);
2. one LLM rewrite per caption (the CIReVL prompt structure: Image Content / Instruction / Edited
   Description);
3. the query vector is the normalised mean of the edited captions' text vectors (LDRE's CIRR ensemble),
   searched against the gallery images under the task's protocol.

LDRE's CIRCO-only "adaptive ensemble" (one softmax weight per caption slot from margins summed over the
whole query set, so transductive) is not implemented yet; `ensemble` names the rule in use.
Per query: `n_captions` caption calls and `n_captions` rewrite calls (counted in the cost).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirbench.core.run import Run
from cirbench.core.types import Item, Query, Task
from cirbench.llm.base import LMM, LMMRequest
from cirbench.retrieval.base import ComponentSpec, Context, register_retriever
from cirbench.retrieval.dense import encode, mean_vectors, search_task
from cirbench.retrieval.methods.artifacts import ArtifactJob, ArtifactSpec, ArtifactStore, sha256_text
from cirbench.retrieval.methods.cirevl import CIReVL, _answer, _image_bytes, parse_edited

SPEC = ComponentSpec(
    name="ldre",
    description="LDRE: n sampled captions -> n LLM rewrites -> mean of their text features vs gallery images",
    options={
        "encoder": "model name (required): the text and image towers, e.g. clip-l14",
        "lmm_model": "str (required): the chat model that captions and rewrites",
        "lmm_base_url": "str, http://127.0.0.1:8000/v1: its OpenAI-compatible endpoint",
        "lmm_api_key_env": "str, OPENAI_API_KEY: the environment variable holding the key ('' for none)",
        "captioner_model": "str, the lmm_model: a separate model for the captions",
        "n_captions": "int, 15: sampled captions (and rewrites) per query",
        "caption_temperature": "float, 1.0: sampling temperature of the captions",
        "caption_top_p": "float, 0.9: nucleus sampling of the captions",
        "artifacts": "path, <cache>/artifacts: where captions and rewrites are kept (resumable)",
        "device": "cpu, cuda, ... (default cpu): where the encoder runs",
    },
    required=("encoder", "lmm_model"),
)
ENSEMBLE = "normalised mean of the edited captions' text vectors (LDRE's CIRR rule)"


@dataclass
class LDRE(CIReVL):
    n_captions: int = 15
    caption_temperature: float = 1.0
    caption_top_p: float = 0.9
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    def _sampled_spec(self, ctx: Context) -> ArtifactSpec:
        return ArtifactSpec("sampled_caption", self.captioner.fingerprint(), sha256_text(self.caption_prompt),
                            {"max_tokens": self.caption_max_tokens, "temperature": self.caption_temperature,
                             "top_p": self.caption_top_p}, ctx.seed)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "method": "ldre", "n_captions": self.n_captions,
                "caption_sampling": {"temperature": self.caption_temperature, "top_p": self.caption_top_p},
                "ensemble": ENSEMBLE}

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        return {**super().describe(task, ctx), "method": "ldre", "n_captions": self.n_captions,
                "ensemble": ENSEMBLE}

    def sampled_captions(self, task: Task, ctx: Context) -> dict[str, list[str]]:
        """query id -> its reference's `n_captions` sampled captions (slot i of a reference is one item)."""
        refs: dict[str, Item] = {}
        for q in task.queries:
            refs.setdefault(q.reference_id or q.id, Item(q.reference_id or q.id, image=q.item.image))
        items = [(f"{ref}#{i}", it.content_key()) for ref, it in refs.items() for i in range(self.n_captions)]

        def make(jobs: Sequence[ArtifactJob]) -> list[str]:
            reqs = [LMMRequest(parts=(self.caption_prompt, _image_bytes(refs[j.id.rsplit("#", 1)[0]])),
                               max_tokens=self.caption_max_tokens, temperature=self.caption_temperature,
                               top_p=self.caption_top_p, seed=j.seed, json_mode=False) for j in jobs]
            with ctx.cost.timed("caption"):
                replies = self.captioner.complete_many(reqs)
            ctx.cost.add("caption", lmm_calls=len(reqs))
            return [_answer(r, "caption", j.id) for r, j in zip(replies, jobs, strict=True)]

        caps = self.store.generate(self._sampled_spec(ctx), items, make, batch_size=ctx.batch_size)
        return {q.id: [str(caps[f"{q.reference_id or q.id}#{i}"]) for i in range(self.n_captions)]
                for q in task.queries}

    def slot_rewrites(self, task: Task, captions: dict[str, list[str]], ctx: Context) -> dict[str, list[str]]:
        """query id -> one edited description per caption slot (the raw instruction where none parsed)."""
        by_id: dict[str, Query] = {q.id: q for q in task.queries}

        def split(job_id: str) -> tuple[str, int]:
            qid, slot = job_id.rsplit("#", 1)
            return qid, int(slot)

        def make(jobs: Sequence[ArtifactJob]) -> list[str]:
            reqs = []
            for j in jobs:
                qid, slot = split(j.id)
                text = self._rewrite_text(captions[qid][slot], by_id[qid].item.text or "")
                reqs.append(LMMRequest(parts=(text,), max_tokens=self.rewrite_max_tokens,
                                       temperature=self.temperature, json_mode=False))
            with ctx.cost.timed("rewrite"):
                replies = self.rewriter.complete_many(reqs)
            ctx.cost.add("rewrite", lmm_calls=len(reqs))
            out = []
            for r, j in zip(replies, jobs, strict=True):
                edited = parse_edited(_answer(r, "rewrite", j.id))
                if edited is None:
                    ctx.cost.add("rewrite", parse_fallbacks=1)
                    edited = by_id[split(j.id)[0]].item.text or ""
                out.append(edited)
            return out

        items = [(f"{q.id}#{i}", hashlib.sha256(f"{c}\x00{q.item.text or ''}".encode()).hexdigest())
                 for q in task.queries for i, c in enumerate(captions[q.id])]
        got = self.store.generate(self._rewrite_spec(ctx), items, make, batch_size=ctx.batch_size)
        return {q.id: [str(got[f"{q.id}#{i}"]) for i in range(self.n_captions)] for q in task.queries}

    def retrieve(self, task: Task, ctx: Context) -> Run:
        edited = self.slot_rewrites(task, self.sampled_captions(task, ctx), ctx)
        texts = [Item(f"{q.id}#{i}", text=t) for q in task.queries for i, t in enumerate(edited[q.id])]
        rows = [list(range(k * self.n_captions, (k + 1) * self.n_captions)) for k in range(len(task.queries))]
        with ctx.cost.timed("encode_text"):
            tv, _ = encode(self.encoder, texts, "query", None, ctx, "encoding edited captions")
        ctx.cost.add("encode_text", text_encodes=len(texts))
        with ctx.cost.timed("encode_gallery"):
            cv, _ = encode(self.encoder, list(task.corpus), "document", None, ctx, "encoding gallery")
        ctx.cost.add("encode_gallery", image_encodes=len(task.corpus))
        with ctx.cost.timed("search"):
            return search_task(task, mean_vectors(tv, rows), cv, ctx.top_k, ctx)


def _factory(*, encoder: str, lmm_model: str, lmm_base_url: str = "http://127.0.0.1:8000/v1",
             lmm_api_key_env: str | None = "OPENAI_API_KEY", captioner_model: str | None = None,
             n_captions: int = 15, caption_temperature: float = 1.0, caption_top_p: float = 0.9,
             artifacts: str | None = None, device: str = "cpu") -> LDRE:
    from cirbench.core.cache import default_cache_dir
    from cirbench.core.options import as_float, as_int
    from cirbench.llm.openai_client import OpenAIChatLMM
    from cirbench.models.registry import get_model

    def lmm(model: str) -> LMM:
        return OpenAIChatLMM(model=model, base_url=lmm_base_url, api_key_env=lmm_api_key_env or None,
                             json_mode=False)

    rewriter = lmm(lmm_model)
    extra: dict[str, Any] = {} if device == "cpu" else {"device": device}
    captioner = lmm(captioner_model) if captioner_model else rewriter
    return LDRE(encoder=get_model(encoder, **extra), captioner=captioner, rewriter=rewriter,
                store=ArtifactStore(Path(artifacts) if artifacts else default_cache_dir() / "artifacts"),
                n_captions=as_int(n_captions, "n_captions", low=1),
                caption_temperature=as_float(caption_temperature, "caption_temperature"),
                caption_top_p=as_float(caption_top_p, "caption_top_p"))


register_retriever(SPEC, _factory)

__all__ = ["ENSEMBLE", "LDRE", "SPEC"]
