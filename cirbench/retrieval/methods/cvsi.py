"""CVSI (Ye et al., ICDM 2025): CIReVL's rewrite, a LinCIR pseudo-token query and gallery captions, fused.

Per query (methods.md §3.1, the released `main.py` / `core/retrieval_engine.py`):
- n sampled captions of the reference (BLIP-2, 15 in the release);
- one LLM call with all n captions ("Image Content: c1, c2, ..."), a CIReVL-style rewrite prompt per
  benchmark: q_s, the unit CLIP text feature of the reply;
- a second LLM call (`cvsi-added-objects`): a noun phrase for what the change most likely adds;
- the pseudo-token of the reference (a Phi token mapper, as the textual-inversion methods) in
  "a photo of $ that {text}. And the photo should have {added}.": q_f;
- q_v, the unit CLIP image feature of the reference.
Per gallery item: its unit CLIP image feature t_v and the mean t_c of the unit text features of its n
captions.

Fusion (fusion.py, recorded as used): q = α·q_s + β·q_f + (1−α−β)·q_v, g = (1−γ)·t_v + γ·t_c, score ⟨q, g⟩.
The released weights: CIRR and CIRCO α=0.6, β=0.4, γ=0.2; FashionIQ α=0.2, β=0.6, γ=0.1. The released
CIRR/CIRCO paths do not re-normalise t_c (`caption_mean: released`: re-normalised on FashionIQ only).

Named options where the release and the paper differ: the paper's figure averages N modified captions, the
code makes one call with all captions (cirbench does the latter); the code keeps the LLM's whole reply as the
modified caption (`rewrite_reply: whole`; `edited` takes the 'Edited Description:' line instead).
Every model call is an artifact (captions per reference and per gallery item, rewrites, added objects,
pseudo-tokens), so a rerun asks no model again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Item, Task
from cirbench.llm.base import LMM
from cirbench.retrieval.base import ComponentSpec, Context
from cirbench.retrieval.dense import encode, search_task
from cirbench.retrieval.methods import fusion
from cirbench.retrieval.methods.cirevl import DEFAULT_REWRITE_PROMPTS
from cirbench.retrieval.methods.common import (
    StageReport,
    TextQueryMethod,
    caption_images,
    caption_stage,
    lmm_record,
    open_store,
    rewrite_stage,
)
from cirbench.retrieval.methods.components import Captioner, Decoding
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt
from cirbench.retrieval.methods.textual_inversion import (
    encode_templated,
    mean_over_phrasings,
    phrasings,
    pick,
    pseudo_token_stage,
    template_fields,
)
from cirbench.retrieval.methods.token_mapper import TokenMapper, check_placeholder

ALPHA: Mapping[str, float] = {"cirr": 0.6, "circo": 0.6, "fashioniq": 0.2, "default": 0.6}
BETA: Mapping[str, float] = {"cirr": 0.4, "circo": 0.4, "fashioniq": 0.6, "default": 0.4}
GAMMA: Mapping[str, float] = {"cirr": 0.2, "circo": 0.2, "fashioniq": 0.1, "default": 0.2}
"""The released code's weights per benchmark family (methods.md §3.2)."""
CAPTION_MEANS = ("released", "normalized", "unnormalized")
REWRITE_REPLIES = ("whole", "edited")
GALLERY_STAGES = ("encode_gallery", "gallery_captions", "encode_gallery_captions")
GALLERY_BLOCK = 4096
"""Gallery items whose caption features are held at once (t_c is reduced block by block)."""

SPEC = ComponentSpec(
    name="cvsi",
    description="CVSI: n captions -> LLM rewrite + added objects; pseudo-token query; gallery captions; "
    "weighted fusion",
    options={
        "components.encoder / captioner / rewriter": "as cirevl's (the rewriter also "
        "names the added objects)",
        "components.mapper": "mapping, required: {kind: lincir|searle, weights: FILE}: the Phi token mapper",
        "prompts.caption / rewrite / added / template": "caption-none, CIReVL's per-benchmark rewrite "
        "prompts, cvsi-added-objects, ti-cvsi",
        "decoding.caption": "mapping, {n: 15, num_beams: 15, top_p: 0.9, max_tokens: 30}: both sides",
        "decoding.rewrite / decoding.added": "mappings, {max_tokens: 700, temperature: 0} / {max_tokens: 60}",
        "options.alpha / beta / gamma": "number or {task: number, default: number}: the fusion weights "
        "(released: CIRR/CIRCO 0.6/0.4/0.2, FashionIQ 0.2/0.6/0.1)",
        "options.caption_mean": "released|normalized|unnormalized, released: t_c re-normalised on "
        "FashionIQ only",
        "options.rewrite_reply": "whole|edited, whole (released): the LLM's reply as the modified caption",
    },
)


def per_task(value: Any) -> dict[str, float]:
    """A fusion weight as the config gives it: one number for every task, or {task family: number}."""
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, bool):
        raise TypeError("a weight is a number")
    return {"default": float(value)}


def _for(table: Mapping[str, float], task: Task) -> float:
    family = task.name.split(":")[0]
    for key in (task.name, family, family.split("-")[0], "default"):
        if key in table:
            return float(table[key])
    raise ValueError(f"no fusion weight for task {task.name!r} (and no 'default')")


@dataclass
class CVSI(TextQueryMethod):
    """A Retriever: the fused CVSI query vs the fused gallery vector, exact search per the task's protocol."""

    captioner: Captioner | None = None
    rewriter: LMM | None = None
    mapper: TokenMapper | None = None
    caption_prompt: Prompt = field(default_factory=lambda: BUILTIN["caption-none"])
    rewrite_prompts: Mapping[str, Prompt] = field(
        default_factory=lambda: {k: BUILTIN[v] for k, v in DEFAULT_REWRITE_PROMPTS.items()})
    added_prompt: Prompt = field(default_factory=lambda: BUILTIN["cvsi-added-objects"])
    templates: Mapping[str, Prompt] = field(default_factory=lambda: {"default": BUILTIN["ti-cvsi"]})
    caption_decoding: Decoding = field(
        default_factory=lambda: Decoding(max_tokens=30, top_p=0.9, num_beams=15, n=15))
    rewrite_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=700))
    added_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=60))
    alpha: Mapping[str, float] = field(default_factory=lambda: dict(ALPHA))
    beta: Mapping[str, float] = field(default_factory=lambda: dict(BETA))
    gamma: Mapping[str, float] = field(default_factory=lambda: dict(GAMMA))
    caption_mean: str = "released"
    rewrite_reply: str = "whole"
    name: str = "cvsi"
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    def __post_init__(self) -> None:
        from cirbench.core.options import did_you_mean

        if self.captioner is None or self.rewriter is None or self.mapper is None:
            missing = [k for k in ("captioner", "rewriter", "mapper") if getattr(self, k) is None]
            raise ValueError(f"cvsi needs components.{', components.'.join(missing)}")
        for opt, value, known in (("caption_mean", self.caption_mean, CAPTION_MEANS),
                                  ("rewrite_reply", self.rewrite_reply, REWRITE_REPLIES)):
            if value not in known:
                raise ValueError(f"options.{opt}: {value!r} is not one of {', '.join(known)}"
                                 f"{did_you_mean(value, known)}")
        for table in (self.alpha, self.beta, self.gamma):
            if not all(0.0 <= w <= 1.0 for w in table.values()):
                raise ValueError("options.alpha / beta / gamma: every weight must be in [0, 1]")
        for key in set(self.alpha) | set(self.beta):
            a = self.alpha.get(key, self.alpha.get("default", 0.0))
            b = self.beta.get(key, self.beta.get("default", 0.0))
            if a + b > 1.0 + 1e-9:
                raise ValueError(f"options.alpha + options.beta must be <= 1 (the image weight is 1 - alpha "
                                 f"- beta); {key}: {a} + {b}")
        if self.rewrite_decoding.n != 1 or self.added_decoding.n != 1:
            raise ValueError("cvsi makes one rewrite and one added-objects call per query (decoding n: 1)")
        check_placeholder(self.clip, self.mapper)
        for p in self.templates.values():
            template_fields(p, ("text", "added"))
            if p.text.count(self.mapper.placeholder) != 1:
                raise ValueError(f"template {p.id!r} must hold the placeholder {self.mapper.placeholder!r} "
                                 "exactly once")
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)

    # ------------------------------------------------------------------------------------------ records

    def weights(self, task: Task) -> dict[str, float]:
        a, b, g = _for(self.alpha, task), _for(self.beta, task), _for(self.gamma, task)
        return {"alpha": a, "beta": b, "image": 1.0 - a - b, "gamma": g}

    def renormalize_captions(self, task: Task) -> bool:
        if self.caption_mean == "released":
            return task.name.split(":")[0].startswith("fashioniq")
        return self.caption_mean == "normalized"

    def expressions(self, task: Task) -> tuple[fusion.VecSum, fusion.VecSum]:
        """(query vector, gallery vector) as fusion nodes, with this task's weights."""
        w = self.weights(task)
        query = fusion.VecSum(((w["alpha"], fusion.Vec("q_s")), (w["beta"], fusion.Vec("q_f")),
                               (w["image"], fusion.Vec("q_v"))), normalize_each=True, normalize_sum=False)
        gallery = fusion.VecSum(
            ((1.0 - w["gamma"], fusion.Vec("t_v", normalize=True)),
             (w["gamma"], fusion.Vec("t_c", normalize=False))),
            normalize_each=False, normalize_sum=False)
        return query, gallery

    def caption_mean_node(self, task: Task) -> fusion.MeanOver:
        renorm = self.renormalize_captions(task)
        return fusion.MeanOver("captions", normalize_each=True, normalize_result=renorm)

    def fingerprint(self) -> dict[str, Any]:
        assert self.captioner is not None and self.mapper is not None
        return {
            "method": "cvsi",
            "encoder": self.clip.fingerprint(),
            "captioner": self.captioner.fingerprint(),
            "rewriter": lmm_record(self.rewriter),
            "mapper": self.mapper.fingerprint(),
            "prompts": {
                "caption": self.caption_prompt.record(),
                "rewrite": {k: p.record() for k, p in sorted(self.rewrite_prompts.items())},
                "added": self.added_prompt.record(),
                "template": {k: p.record() for k, p in sorted(self.templates.items())},
            },
            "decoding": {"caption": self.caption_decoding.record(), "rewrite": self.rewrite_decoding.record(),
                         "added": self.added_decoding.record()},
            "weights": {"alpha": dict(self.alpha), "beta": dict(self.beta), "gamma": dict(self.gamma)},
            "caption_mean": self.caption_mean,
            "rewrite_reply": self.rewrite_reply,
        }

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        q, g = self.expressions(task)
        t = pick(self.templates, task, "template")
        return {"method": {
            "name": self.name, "kind": "cvsi",
            "captions_per_image": self.caption_decoding.n,
            "weights": self.weights(task),
            "query": q.record(), "gallery": g.record(), "caption_mean": self.caption_mean_node(task).record(),
            "rewrite_prompt": pick(self.rewrite_prompts, task, "rewrite").record(),
            "added_prompt": self.added_prompt.record(),
            "template": {**t.record(), "text": t.text},
            "rewrite_reply": self.rewrite_reply,
            "instruction": "the task's query text per its protocol; the pseudo-token text averages the "
                           "protocol's phrasings (FashionIQ both-orders)",
            "search": {"top_k": ctx.top_k, "dtype": ctx.search_dtype, "backend": ctx.search_backend},
            **self.base_record(ctx)}}

    def prepare(self, task: Task) -> Task:
        task = super().prepare(task)
        if task.corpus_frames or any(it.image is None for it in task.corpus):
            raise ValueError(f"cvsi captions every gallery image, and {task.name}'s gallery is not one image "
                             "per item")
        return task

    # ------------------------------------------------------------------------------------------ stages

    def texts(self, task: Task, ctx: Context, reports: dict[str, StageReport]) -> tuple[
            dict[str, str], dict[str, str], dict[str, np.ndarray], dict[str, list[str]]]:
        """(modified caption, added objects, pseudo-token) per query id and the captions per gallery item:
        every model call of the method, through the artifact store."""
        assert self.captioner is not None and self.rewriter is not None and self.mapper is not None
        with open_store(ctx, self.artifacts_dir) as store:
            caps = caption_stage(task, self.captioner, self.caption_prompt, self.caption_decoding, store, ctx,
                                 stage="ref_captions", imported=None, reports=reports)
            rows = [(q.id, ", ".join(caps[q.id]), q.item.text or "") for q in task.queries]
            edited = rewrite_stage(rows, self.rewriter, pick(self.rewrite_prompts, task, "rewrite"),
                                   self.rewrite_decoding, store, ctx, stage="edited_caption", reports=reports,
                                   parse=self.rewrite_reply == "edited")
            added = rewrite_stage(rows, self.rewriter, self.added_prompt, self.added_decoding, store, ctx,
                                  stage="added_objects", reports=reports, parse=False)
            tokens = pseudo_token_stage(task, self.clip, self.mapper, store, ctx, reports=reports)
            gallery = caption_images({it.id: it for it in task.corpus}, self.captioner, self.caption_prompt,
                                     self.caption_decoding, store, ctx, stage="gallery_captions",
                                     reports=reports)
        return edited, added, tokens, gallery

    def caption_features(self, task: Task, captions: Mapping[str, list[str]], ctx: Context) -> np.ndarray:
        """t_c per gallery item (corpus order), the caption features reduced a block of items at a time."""
        node = self.caption_mean_node(task)
        out = []
        ids = [it.id for it in task.corpus]
        for a in range(0, len(ids), GALLERY_BLOCK):
            block = ids[a:a + GALLERY_BLOCK]
            flat = [c for i in block for c in captions[i]]
            vecs = self.text_vectors(flat, ctx, "encoding gallery captions", stage="encode_gallery_captions")
            rows, at = [], 0
            for i in block:
                rows.append(vecs[at:at + len(captions[i])])
                at += len(captions[i])
            out.append(node.vectors({"captions": rows}))
        return np.concatenate(out).astype(np.float32)

    def reference_vectors(self, task: Task, ctx: Context) -> np.ndarray:
        """q_v: the unit CLIP image feature of each query's reference (the gallery's embedding cache)."""
        refs: dict[str, Item] = {}
        for q in task.queries:
            refs.setdefault(q.reference_id or q.id, Item(q.reference_id or q.id, image=q.item.image))
        with ctx.cost.timed("encode_reference"):
            vecs, stats = encode(self.clip, list(refs.values()), "document", None, ctx,
                                 "encoding reference images")
        ctx.cost.add("encode_reference", image_encodes=int(stats.get("encoded", len(refs))))
        at = {r: i for i, r in enumerate(refs)}
        return vecs[[at[q.reference_id or q.id] for q in task.queries]]

    def retrieve(self, task: Task, ctx: Context) -> Run:
        assert self.mapper is not None
        reports: dict[str, StageReport] = {}
        edited, added, tokens, gallery_caps = self.texts(task, ctx, reports)
        q_s = self.text_vectors([edited[q.id] for q in task.queries], ctx, "encoding modified captions")
        template = pick(self.templates, task, "template").text
        groups = phrasings(task)
        texts = [template.format(text=t, added=added[q.id]) for q, g in zip(task.queries, groups, strict=True)
                 for t in g]
        rows = np.stack([tokens[q.id] for q, g in zip(task.queries, groups, strict=True) for _ in g])
        counts = {"rows_with_extra_placeholders": 0}
        q_f, phr = mean_over_phrasings(encode_templated(self.clip, self.mapper, texts, rows, ctx, counts),
                                       [len(g) for g in groups])
        q_v = self.reference_vectors(task, ctx)
        t_v = self.gallery_vectors(task, ctx)
        t_c = self.caption_features(task, gallery_caps, ctx)
        qexpr, gexpr = self.expressions(task)
        qv = np.asarray(qexpr.vectors({"q_s": q_s, "q_f": q_f, "q_v": q_v}), dtype=np.float32)
        gv = np.asarray(gexpr.vectors({"t_v": t_v, "t_c": t_c}), dtype=np.float32)
        self.encoding["fusion"] = {"query": qexpr.record(), "gallery": gexpr.record(),
                                   "caption_mean": self.caption_mean_node(task).record(),
                                   "phrasings": phr.record(), **counts}
        with ctx.cost.timed("search"):
            run = search_task(task, qv, gv, ctx.top_k, ctx)
        self.finish_cost(task, ctx, reports, gallery_stages=GALLERY_STAGES)
        return run


__all__ = ["ALPHA", "BETA", "CAPTION_MEANS", "CVSI", "GAMMA", "REWRITE_REPLIES", "SPEC", "per_task"]
