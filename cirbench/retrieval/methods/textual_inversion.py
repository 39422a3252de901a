"""Pic2Word, SEARLE / SEARLE-XL and LinCIR (methods.md §6): the reference image becomes one pseudo-word.

Query: the reference's unnormalised CLIP image embedding -> the mapping net (`TokenMapper`) -> a token
embedding placed at the placeholder of a per-benchmark template -> CLIP's text tower -> unit vector. The
gallery is plain CLIP image features (the dense retriever's, cached), searched per the task's protocol:
CIRR excludes the reference, FashionIQ searches each category, CIRCO keeps the reference.

The text is the task's query text per its protocol (CIRCO: the relative caption alone; FashionIQ: the
protocol's caption join). Under FashionIQ's default `both-orders` protocol each order is templated and
encoded, and the two unit vectors are averaged and re-normalised (SEARLE / LinCIR's validate.py);
Pic2Word's released FashionIQ run is `--protocol c2-and-c1` (one order, "c2 and c1").

Pseudo-tokens are artifacts (stage `pseudo_token`, one per distinct reference image), keyed by the mapper's
and the encoder's fingerprints, so a rerun maps nothing again.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Item, Task
from cirbench.retrieval.base import ComponentSpec, Context
from cirbench.retrieval.dense import search_task
from cirbench.retrieval.methods import fusion
from cirbench.retrieval.methods.artifacts import ArtifactJob, ArtifactSpec, ArtifactStore
from cirbench.retrieval.methods.common import StageReport, TextQueryMethod, artifact_component, open_store
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt
from cirbench.retrieval.methods.token_mapper import (
    TokenMapper,
    check_placeholder,
    pseudo_token_text_features,
    raw_image_features,
)

DEFAULT_TEMPLATES: Mapping[str, str] = {"default": "ti-searle"}
"""SEARLE's and LinCIR's template on every benchmark; Pic2Word's config names `ti-pic2word`."""

SPEC = ComponentSpec(
    name="textual-inversion",
    description="textual inversion: reference image -> mapping net -> pseudo-token in a template -> "
    "CLIP text",
    options={
        "components.encoder": "str, required: the CLIP the net was trained for (hf-clip:... or "
        "open_clip:...)",
        "components.mapper": "mapping, required: {kind: pic2word|searle|lincir, weights: FILE"
        "[, l2_normalize]}",
        "prompts.template": "str or {task: id, default: id}: the query template per benchmark "
        "(ti-searle: 'a photo of $ that {text}', ti-pic2word: 'a photo of * , {text}')",
    },
)


def template_fields(prompt: Prompt, allowed: Sequence[str]) -> set[str]:
    """The `{field}`s of a template, refused when it names one the method does not fill."""
    names = {f for _, f, _, _ in string.Formatter().parse(prompt.text) if f is not None}
    unknown = names - set(allowed)
    if unknown or "text" not in names:
        raise ValueError(
            f"template {prompt.id!r} must contain {{text}} and only {{{', '.join(allowed)}}}; "
            f"it has {sorted(names)}"
        )
    return names


def pick(prompts: Mapping[str, Prompt], task: Task, stage: str) -> Prompt:
    """A per-benchmark prompt for this task: the task name, its family, its base family, then 'default'."""
    family = task.name.split(":")[0]
    for key in (task.name, family, family.split("-")[0], "default"):
        if key in prompts:
            return prompts[key]
    raise ValueError(f"no {stage} prompt for task {task.name!r} (and no 'default')")


def pseudo_token_stage(
    task: Task,
    clip: Any,
    mapper: TokenMapper,
    store: ArtifactStore,
    ctx: Context,
    *,
    reports: dict[str, StageReport],
) -> dict[str, np.ndarray]:
    """query id -> the pseudo-token of its reference image (mapped once per distinct image, cached)."""
    stage = "pseudo_token"
    by_ref: dict[str, Item] = {}
    ref_of: dict[str, str] = {}
    for q in task.queries:
        ref = q.reference_id or q.id
        ref_of[q.id] = ref
        by_ref.setdefault(ref, Item(ref, image=q.item.image))
    component = {"mapper": mapper.fingerprint(), "encoder": artifact_component(clip.fingerprint())}
    spec = ArtifactSpec(stage, component, "", {}, ctx.seed)
    report = reports.setdefault(stage, StageReport(stage, spec.namespace))

    def make(jobs: Sequence[ArtifactJob]) -> list[list[float]]:
        with ctx.cost.timed(stage):
            feats = raw_image_features(clip, [by_ref[j.id] for j in jobs])
            tokens = mapper.map(feats)
        ctx.cost.add(stage, image_encodes=len(jobs), mapper_passes=len(jobs))
        report.generated += len(jobs)
        return [[float(x) for x in row] for row in tokens]

    got = store.generate(
        spec, [(r, it.content_key()) for r, it in by_ref.items()], make, batch_size=ctx.batch_size
    )
    report.items += len(got)
    return {qid: np.asarray(got[ref], dtype=np.float32) for qid, ref in ref_of.items()}


def phrasings(task: Task) -> list[list[str]]:
    """Each query's texts: the protocol's main text and its alternatives (FashionIQ's reversed order)."""
    return [[str(it.text or "") for it in (q.item, *q.alt_items)] for q in task.queries]


def encode_templated(
    clip: Any,
    mapper: TokenMapper,
    texts: Sequence[str],
    tokens: np.ndarray,
    ctx: Context,
    counts: dict[str, int],
) -> np.ndarray:
    """Unit text features of templated texts with their pseudo-tokens injected, a batch at a time."""
    out = []
    bs = max(1, ctx.batch_size)
    with ctx.cost.timed("encode_text"):
        for a in range(0, len(texts), bs):
            out.append(
                pseudo_token_text_features(
                    clip, texts[a : a + bs], tokens[a : a + bs], mapper.placeholder_id, counts
                )
            )
    ctx.cost.add("encode_text", text_encodes=len(texts))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def mean_over_phrasings(vecs: np.ndarray, groups: Sequence[int]) -> tuple[np.ndarray, fusion.MeanOver]:
    """One unit vector per query: the mean of its phrasings' unit vectors, re-normalised."""
    expr = fusion.MeanOver("phrasings", normalize_each=True, normalize_result=True)
    rows, at = [], 0
    for n in groups:
        rows.append(vecs[at : at + n])
        at += n
    return np.asarray(expr.vectors({"phrasings": rows}), dtype=np.float32), expr


@dataclass
class TextualInversion(TextQueryMethod):
    """A Retriever: pseudo-token query (reference image through a mapping net) vs gallery image features."""

    mapper: TokenMapper | None = None
    templates: Mapping[str, Prompt] = field(
        default_factory=lambda: {k: BUILTIN[v] for k, v in DEFAULT_TEMPLATES.items()}
    )
    name: str = "textual-inversion"
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    def __post_init__(self) -> None:
        if self.mapper is None:
            raise ValueError("textual-inversion needs a token mapper (components.mapper)")
        check_placeholder(self.clip, self.mapper)
        for p in self.templates.values():
            template_fields(p, ("text",))
            if p.text.count(self.mapper.placeholder) != 1:
                raise ValueError(
                    f"template {p.id!r} must hold the placeholder {self.mapper.placeholder!r} "
                    f"of the {self.mapper.kind_name} net exactly once"
                )
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)

    def fingerprint(self) -> dict[str, Any]:
        assert self.mapper is not None
        return {
            "method": "textual-inversion",
            "encoder": self.clip.fingerprint(),
            "mapper": self.mapper.fingerprint(),
            "prompts": {"template": {k: p.record() for k, p in sorted(self.templates.items())}},
        }

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        assert self.mapper is not None
        t = pick(self.templates, task, "template")
        return {
            "method": {
                "name": self.name,
                "kind": "textual-inversion",
                "mapper": self.mapper.kind_name,
                "query": "CLIP text feature of the template with the reference image's pseudo-token at "
                f"{self.mapper.placeholder!r} (id {self.mapper.placeholder_id})",
                "template": {**t.record(), "text": t.text},
                "phrasings": "mean of the unit vectors of the protocol's text and its alternatives, "
                "re-normalised (FashionIQ both-orders)",
                "image_features": "unnormalised CLIP image embeddings"
                + (", L2-normalised before the net" if self.mapper.l2_normalize else ""),
                "search": {"top_k": ctx.top_k, "dtype": ctx.search_dtype, "backend": ctx.search_backend},
                **self.base_record(ctx),
            }
        }

    def retrieve(self, task: Task, ctx: Context) -> Run:
        assert self.mapper is not None
        reports: dict[str, StageReport] = {}
        with open_store(ctx, self.artifacts_dir) as store:
            tokens = pseudo_token_stage(task, self.clip, self.mapper, store, ctx, reports=reports)
        template = pick(self.templates, task, "template").text
        groups = phrasings(task)
        texts = [template.format(text=t) for g in groups for t in g]
        rows = np.stack([tokens[q.id] for q, g in zip(task.queries, groups, strict=True) for _ in g])
        counts = {"rows_with_extra_placeholders": 0}
        vecs = encode_templated(self.clip, self.mapper, texts, rows, ctx, counts)
        qv, expr = mean_over_phrasings(vecs, [len(g) for g in groups])
        self.encoding["query"] = {"fusion": expr.record(), **counts}
        cv = self.gallery_vectors(task, ctx)
        with ctx.cost.timed("search"):
            run = search_task(task, qv, cv, ctx.top_k, ctx)
        self.finish_cost(task, ctx, reports)
        return run


__all__ = [
    "DEFAULT_TEMPLATES",
    "SPEC",
    "TextualInversion",
    "encode_templated",
    "mean_over_phrasings",
    "phrasings",
    "pick",
    "pseudo_token_stage",
    "template_fields",
]
