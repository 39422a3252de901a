"""CIReVL (Karthik et al., ICLR 2024): caption the reference, let an LLM rewrite the caption per the
instruction, and retrieve gallery images with the text feature of the rewrite (no image on the query side).

The prompts are cirbench's own wording of the documented structure ("Image Content: ... / Instruction: ...
/ Edited Description: ..."); a user who needs the released prompt passes its text as `rewrite_prompt`, and
its SHA-256 is recorded either way. As in the released code, a reply without an "Edited Description:" line
falls back to the raw instruction (counted as `parse_fallbacks` in the cost). Captions and rewrites are
artifacts (`ArtifactStore`): a killed run resumes without asking the LMM twice, and released intermediates
can be imported instead of generated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirbench.core.run import Run
from cirbench.core.types import Item, Query, Task
from cirbench.llm.base import LMM, LMMError, LMMRequest
from cirbench.models.base import Encoder, check_modalities
from cirbench.retrieval.base import ComponentSpec, Context, register_retriever
from cirbench.retrieval.dense import TIE_BREAK, encode, search_task
from cirbench.retrieval.methods.artifacts import (
    ArtifactJob,
    ArtifactSpec,
    ArtifactStore,
    ImportedArtifacts,
    sha256_text,
)

CAPTION_PROMPT = (
    "Write one complete, detailed description of this image. Mention every object you can see, "
    "its colour, its position and what it is doing. Answer with the description only."
)

REWRITE_PROMPT = (
    "You will be shown the description of a photo and an instruction that says how the photo should be "
    "changed. Write the description of the changed photo.\n"
    "The input has two lines. The first starts with 'Image Content:' and describes the photo. The second "
    "starts with 'Instruction:' and says what to change.\n"
    "Rules: describe only what the changed photo shows, not the change itself; keep everything the "
    "instruction does not touch; be short and concrete; one sentence.\n"
    "Answer with one line that starts with 'Edited Description:'.\n"
    "Example:\n"
    "Image Content: a brown dog sleeping on a green sofa\n"
    "Instruction: make the dog a cat and have it sit up\n"
    "Edited Description: a brown cat sitting on a green sofa"
)

MARKER = "Edited Description:"


def parse_edited(reply: str) -> str | None:
    """The text after the first 'Edited Description:' (on its line), or None when the reply has none."""
    for line in reply.splitlines():
        at = line.find(MARKER)
        if at >= 0:
            text = line[at + len(MARKER):].strip()
            return text or None
    return None


def _image_bytes(item: Item) -> bytes:
    if isinstance(item.image, bytes):
        return item.image
    if isinstance(item.image, Path):
        return item.image.read_bytes()
    raise ValueError(f"query {item.id!r} has no reference image to caption")


SPEC = ComponentSpec(
    name="cirevl",
    description="CIReVL: reference caption -> LLM rewrite -> text feature vs gallery image features",
    options={
        "encoder": "model name (required): the text and image towers, e.g. clip-l14",
        "lmm_model": "str (required): the chat model that captions and rewrites",
        "lmm_base_url": "str, http://127.0.0.1:8000/v1: its OpenAI-compatible endpoint",
        "lmm_api_key_env": "str, OPENAI_API_KEY: the environment variable holding the key ('' for none)",
        "captioner_model": "str, the lmm_model: a separate model for the captions",
        "prompt_file": "path: a rewrite prompt of your own (its sha256 is recorded)",
        "artifacts": "path, <cache>/artifacts: where captions and rewrites are kept (resumable)",
        "captions_file": "path: released captions {reference image id: text}, used read-only (no captioner)",
        "rewrites_file": "path: released edited descriptions {query id: text}, used read-only (no LMM calls)",
        "provenance": "str (required with a file): where the file was released, e.g. repo@commit path",
        "rewrite_max_tokens": "int, 700: the rewrite's max_tokens (the released code's value)",
        "temperature": "float, 0.0: decoding temperature of both LMM stages",
        "device": "cpu, cuda, ... (default cpu): where the encoder runs",
    },
    required=("encoder", "lmm_model"),
)


@dataclass
class CIReVL:
    """A Retriever: reference caption -> LLM rewrite -> text feature -> exact search over gallery images."""

    encoder: Encoder
    captioner: LMM
    rewriter: LMM
    store: ArtifactStore
    caption_prompt: str = CAPTION_PROMPT
    rewrite_prompt: str = REWRITE_PROMPT
    caption_max_tokens: int = 200
    rewrite_max_tokens: int = 700
    temperature: float = 0.0
    imported_captions: ImportedArtifacts | None = None
    imported_rewrites: ImportedArtifacts | None = None
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    # ------------------------------------------------------------------------------------------ specs

    def _caption_spec(self, ctx: Context) -> ArtifactSpec:
        return ArtifactSpec("ref_caption", self.captioner.fingerprint(), sha256_text(self.caption_prompt),
                            {"max_tokens": self.caption_max_tokens, "temperature": self.temperature},
                            ctx.seed)

    def _rewrite_spec(self, ctx: Context) -> ArtifactSpec:
        return ArtifactSpec("edited_caption", self.rewriter.fingerprint(), sha256_text(self.rewrite_prompt),
                            {"max_tokens": self.rewrite_max_tokens, "temperature": self.temperature},
                            ctx.seed)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "method": "cirevl",
            "encoder": self.encoder.fingerprint(),
            "captioner": self.captioner.fingerprint(),
            "rewriter": self.rewriter.fingerprint(),
            "caption_prompt_sha256": sha256_text(self.caption_prompt),
            "rewrite_prompt_sha256": sha256_text(self.rewrite_prompt),
            "decoding": {"caption_max_tokens": self.caption_max_tokens,
                         "rewrite_max_tokens": self.rewrite_max_tokens, "temperature": self.temperature},
            "imported_captions": self.imported_captions.record() if self.imported_captions else None,
            "imported_rewrites": self.imported_rewrites.record() if self.imported_rewrites else None,
        }

    # ------------------------------------------------------------------------------------------ stages

    def captions(self, task: Task, ctx: Context) -> dict[str, str]:
        """query id -> caption of its reference image (one LMM call per distinct reference image)."""
        by_ref: dict[str, Item] = {}
        ref_of: dict[str, str] = {}
        for q in task.queries:
            ref = q.reference_id or q.id
            ref_of[q.id] = ref
            by_ref.setdefault(ref, Item(ref, image=q.item.image))
        items = [(ref, it.content_key()) for ref, it in by_ref.items()]

        def make(jobs: Sequence[ArtifactJob]) -> list[str]:
            reqs = [LMMRequest(parts=(self.caption_prompt, _image_bytes(by_ref[j.id])),
                               max_tokens=self.caption_max_tokens, temperature=self.temperature,
                               json_mode=False) for j in jobs]
            with ctx.cost.timed("caption"):
                replies = self.captioner.complete_many(reqs)
            ctx.cost.add("caption", lmm_calls=len(reqs))
            return [_answer(r, "caption", j.id) for r, j in zip(replies, jobs, strict=True)]

        with ctx.cost.timed("caption_total"):
            caps = self.store.generate(self._caption_spec(ctx), items, make, batch_size=ctx.batch_size,
                                       imported=self.imported_captions)
        return {qid: str(caps[ref]) for qid, ref in ref_of.items()}

    def rewrites(self, task: Task, captions: dict[str, str], ctx: Context) -> dict[str, str]:
        """query id -> edited description (the raw instruction where the reply had none)."""
        by_id: dict[str, Query] = {q.id: q for q in task.queries}

        def content(q: Query) -> str:
            return hashlib.sha256(f"{captions[q.id]}\x00{q.item.text or ''}".encode()).hexdigest()

        def make(jobs: Sequence[ArtifactJob]) -> list[str]:
            reqs = [LMMRequest(parts=(self._rewrite_text(captions[j.id], by_id[j.id].item.text or ""),),
                               max_tokens=self.rewrite_max_tokens, temperature=self.temperature,
                               json_mode=False) for j in jobs]
            with ctx.cost.timed("rewrite"):
                replies = self.rewriter.complete_many(reqs)
            ctx.cost.add("rewrite", lmm_calls=len(reqs))
            out = []
            for r, j in zip(replies, jobs, strict=True):
                edited = parse_edited(_answer(r, "rewrite", j.id))
                if edited is None:
                    ctx.cost.add("rewrite", parse_fallbacks=1)
                    edited = by_id[j.id].item.text or ""
                out.append(edited)
            return out

        items = [(q.id, content(q)) for q in task.queries]
        got = self.store.generate(self._rewrite_spec(ctx), items, make, batch_size=ctx.batch_size,
                                  imported=self.imported_rewrites)
        return {k: str(v) for k, v in got.items()}

    def _rewrite_text(self, caption: str, instruction: str) -> str:
        return f"{self.rewrite_prompt}\nImage Content: {caption}\nInstruction: {instruction}"

    # ------------------------------------------------------------------------------------------ retrieve

    def retrieve(self, task: Task, ctx: Context) -> Run:
        captions = self.captions(task, ctx)
        edited = self.rewrites(task, captions, ctx)
        texts = [Item(q.id, text=edited[q.id]) for q in task.queries]
        with ctx.cost.timed("encode_text"):
            qv, _ = encode(self.encoder, texts, "query", None, ctx, "encoding edited descriptions")
        ctx.cost.add("encode_text", text_encodes=len(texts))
        with ctx.cost.timed("encode_gallery"):
            cv, _ = encode(self.encoder, list(task.corpus), "document", None, ctx, "encoding gallery")
        ctx.cost.add("encode_gallery", image_encodes=len(task.corpus))
        with ctx.cost.timed("search"):
            return search_task(task, qv, cv, ctx.top_k, ctx)

    def prepare(self, task: Task) -> Task:
        check_modalities(self.encoder.spec, {"edited description": "text",
                                             "corpus": task.metadata.corpus_modality})
        return task

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        return {"method": "cirevl", "prompts": {"caption_sha256": sha256_text(self.caption_prompt),
                                                "rewrite_sha256": sha256_text(self.rewrite_prompt)},
                "search": {"top_k": ctx.top_k, "query": "the LLM's edited description as text",
                           "tie_break": TIE_BREAK}}


def _answer(reply: str | LMMError, stage: str, item_id: str) -> str:
    if isinstance(reply, LMMError):
        raise LMMError(f"{stage} of {item_id!r}: {reply}", transient=reply.transient)
    return reply


def _factory(*, encoder: str, lmm_model: str, lmm_base_url: str = "http://127.0.0.1:8000/v1",
             lmm_api_key_env: str | None = "OPENAI_API_KEY", captioner_model: str | None = None,
             prompt_file: str | None = None, artifacts: str | None = None, rewrite_max_tokens: int = 700,
             temperature: float = 0.0, device: str = "cpu", captions_file: str | None = None,
             rewrites_file: str | None = None, provenance: str = "") -> CIReVL:
    """CIReVL from plain options (`--retriever-option`, or a method config's `options:`)."""
    from cirbench.core.cache import default_cache_dir
    from cirbench.core.options import as_float, as_int
    from cirbench.llm.openai_client import OpenAIChatLMM
    from cirbench.models.registry import get_model

    key_env = lmm_api_key_env or None

    def lmm(model: str) -> LMM:
        return OpenAIChatLMM(model=model, base_url=lmm_base_url, api_key_env=key_env, json_mode=False)

    rewriter = lmm(lmm_model)
    captioner = lmm(captioner_model) if captioner_model else rewriter
    prompt = Path(prompt_file).read_text() if prompt_file else REWRITE_PROMPT
    extra: dict[str, Any] = {} if device == "cpu" else {"device": device}
    return CIReVL(encoder=get_model(encoder, **extra), captioner=captioner, rewriter=rewriter,
                  store=ArtifactStore(Path(artifacts) if artifacts else default_cache_dir() / "artifacts"),
                  rewrite_prompt=prompt, rewrite_max_tokens=as_int(rewrite_max_tokens, "rewrite_max_tokens"),
                  temperature=as_float(temperature, "temperature"),
                  imported_captions=_imported(captions_file, provenance),
                  imported_rewrites=_imported(rewrites_file, provenance))


def _imported(path: str | None, provenance: str) -> ImportedArtifacts | None:
    """A released intermediates file, read-only, with the provenance the user declares for it."""
    if path is None:
        return None
    if not str(provenance).strip():
        raise ValueError(f"{path}: an imported file needs --method-option provenance=<repo@commit path>, so "
                         "the result says where its texts came from")
    p = Path(path)
    return ImportedArtifacts.load(p.parent, p.name, provenance=str(provenance))


register_retriever(SPEC, _factory)

__all__ = ["CAPTION_PROMPT", "REWRITE_PROMPT", "SPEC", "CIReVL", "parse_edited"]
