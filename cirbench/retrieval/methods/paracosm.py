"""Paracosm (Wang, Zhao and Kong, arXiv 2602.00813): imagine the target, and give every gallery image a
synthetic twin, then retrieve in CLIP space (methods.md §1; seeds-2026-12.md §2.1).

Query side, per (reference image, modification text):
1. `mental_image`: an image editor (Qwen-Image-Edit by default) edits the reference per the text;
2. `mental_desc`: a VLM writes a short description t_query of the mental image;
3. t_mod: CIRR's raw relative caption; FashionIQ's two joined captions in both orders, their text features
   averaged; CIRCO's text from an LMM that combines the relative caption and the shared concept
   (`circo_text: lmm`; the released code reads this from an unreleased file, so the prompt is cirbench's),
   or the task's query text (`circo_text: protocol`), or a released file (`imports.circo_text`).

Gallery side, per gallery image I (the expensive part, shardable and resumable):
4. `gallery_desc`: the VLM writes a detailed description of I;
5. `synthetic_image`: a text-to-image model (Qwen-Image by default) renders it as I_syn;
6. phi = norm((1 - beta) norm V(I) + beta norm V(I_syn)); beta = 0.5 is the released
   norm(norm V + norm V_syn).

Score (the released `test_cirr_circo.py`): lam * <norm(V(I_m) + T(t_query)), phi> + (1 - lam) * <norm
T(t_mod), phi>, lam = 0.3. Both terms share phi, so the score is one inner product <q, phi> with
q = lam * norm(V + T) + (1 - lam) * norm T(t_mod), searched exactly by the dense retriever (CIRR's reference
removed, FashionIQ's per-category galleries, as the task's protocol says).

Deviations, recorded in the result: cirbench's encoders return unit vectors, so V(I_m) + T(t_query) is a
sum of unit vectors (the release sums raw CLIP features); the prompts are cirbench's own wording; images are
preprocessed by the encoder's own transform (the release uses SEARLE's target-pad).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cirbench.core.run import Run
from cirbench.core.types import Item, Task
from cirbench.llm.base import LMM, LMMError, LMMRequest
from cirbench.models.diffusion import Editor, TextToImage
from cirbench.retrieval.base import ComponentSpec, Context
from cirbench.retrieval.dense import encode, search_task
from cirbench.retrieval.methods import fusion
from cirbench.retrieval.methods.artifacts import (
    ArtifactJob,
    ArtifactSpec,
    ArtifactStore,
    ImportedArtifacts,
    Shard,
)
from cirbench.retrieval.methods.common import (
    StageReport,
    TextQueryMethod,
    artifact_component,
    lmm_record,
    open_store,
)
from cirbench.retrieval.methods.components import Captioner, Decoding, usage
from cirbench.retrieval.methods.images import (
    ImageFormat,
    ImageStageReport,
    image_maker,
    image_path,
)
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt, render
from cirbench.tasks._fashioniq_text import join_captions

CIRCO_TEXTS = ("lmm", "protocol")
SEED_POLICIES = ("per-item", "released")
RELEASED_SEEDS = {"mental_image": 0, "synthetic_image": 42}
"""The released notebook's fixed generator seeds (`torch.manual_seed(0)` for edits, 42 for renders)."""
GALLERY_STAGES = ("encode_gallery", "gallery_desc", "synthetic_image", "encode_synthetic")

DEFAULT_EDIT_PROMPTS: Mapping[str, str] = {"circo": "paracosm-edit-shared", "default": "paracosm-edit"}

SPEC = ComponentSpec(
    name="paracosm",
    description="Paracosm: edited 'mental image' + its description vs real and synthetic gallery images",
    options={
        "components.encoder": "str, required: the dual encoder (a cirbench model name)",
        "components.editor": "mapping: {model: Qwen/Qwen-Image-Edit | qwen-image-edit | flux-kontext | "
        "instruct-pix2pix | hub id | directory, revision, dtype, size: 512, call: {...}}",
        "components.t2i": "mapping: {model: Qwen/Qwen-Image | hub id | directory, revision, dtype, "
        "size: 512, call: {...}}",
        "components.describer": "mapping: a captioner ({kind: lmm, lmm: {...}} or {kind: blip2, ...})",
        "components.writer": "mapping: an LMM, for CIRCO's query text (circo_text: lmm)",
        "options.lam": "float, 0.3: weight of the mental-image term (1 - lam: the modification text's)",
        "options.beta": "float, 0.5: weight of the synthetic image in the gallery feature",
        "options.circo_text": "lmm|protocol, lmm: CIRCO's t_mod from the writer LMM or the task's text",
        "options.seed_policy": "per-item|released, per-item: sha256(base seed, stage, id); released: the "
        "notebook's fixed 0 (edit) and 42 (render) for every item",
        "options.image_format / options.image_quality": "png|webp|jpeg, png; quality 95 (lossy formats)",
        "imports.circo_text": "{file, provenance}: a released {query id: text} file for CIRCO's t_mod",
    },
)


@dataclass(frozen=True)
class StageJob:
    """One artifact stage as data: what `ArtifactStore.generate` (or a distributed engine) runs per item.

    `make` is a pure function of (component fingerprint, prompt hash, seed, item content) per job."""

    spec: ArtifactSpec
    items: Sequence[tuple[str, str]]
    make: Any
    batch_size: int = 1

    def run(self, store: ArtifactStore, shard: Shard | None = None) -> dict[str, Any]:
        return store.generate(self.spec, self.items, self.make, shard=shard or Shard(),
                              batch_size=self.batch_size)


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _diffusion_grown(component: Any, before: Mapping[str, int]) -> dict[str, float]:
    stats = getattr(component, "stats", {}) or {}
    keys = ("generations", "diffusion_steps", "denoiser_calls")
    return {k: float(stats.get(k, 0) - before.get(k, 0)) for k in keys if k in stats}


@dataclass
class Paracosm(TextQueryMethod):
    """A Retriever: mental image + description vs real and synthetic gallery images (methods.md §1)."""

    editor: Editor | None = None
    t2i: TextToImage | None = None
    describer: Captioner | None = None
    writer: LMM | None = None
    edit_size: int = 512
    edit_prompts: Mapping[str, Prompt] = field(
        default_factory=lambda: {k: BUILTIN[v] for k, v in DEFAULT_EDIT_PROMPTS.items()}
    )
    describe_query_prompt: Prompt = field(default_factory=lambda: BUILTIN["paracosm-describe-short"])
    describe_gallery_prompt: Prompt = field(default_factory=lambda: BUILTIN["paracosm-describe-detailed"])
    circo_text_prompt: Prompt = field(default_factory=lambda: BUILTIN["paracosm-circo-text"])
    describe_query_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=256))
    describe_gallery_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=256))
    circo_text_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=256))
    lam: float = 0.3
    beta: float = 0.5
    circo_text: str = "lmm"
    seed_policy: str = "per-item"
    image_format: ImageFormat = field(default_factory=ImageFormat)
    imported_circo_text: ImportedArtifacts | None = None
    name: str = "paracosm"
    spec: ComponentSpec = field(default_factory=lambda: SPEC)

    def __post_init__(self) -> None:
        if self.editor is None or self.t2i is None or self.describer is None:
            raise ValueError("paracosm needs components.editor, components.t2i and components.describer")
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"paracosm: lam and beta must be in [0, 1], got lam={self.lam} beta={self.beta}")
        if self.circo_text not in CIRCO_TEXTS:
            raise ValueError(f"options.circo_text: {self.circo_text!r} is not one of "
                             f"{', '.join(CIRCO_TEXTS)}")
        if self.seed_policy not in SEED_POLICIES:
            raise ValueError(f"options.seed_policy: {self.seed_policy!r} is not one of "
                             f"{', '.join(SEED_POLICIES)}")
        for d in (self.describe_query_decoding, self.describe_gallery_decoding, self.circo_text_decoding):
            if d.n != 1:
                raise ValueError("paracosm writes one description per image (decoding n: 1)")
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)

    # ------------------------------------------------------------------------------------------ records

    def edit_prompt(self, task: Task) -> Prompt:
        family = task.name.split(":")[0]
        for key in (task.name, family, family.split("-")[0], "default"):
            if key in self.edit_prompts:
                return self.edit_prompts[key]
        raise ValueError(f"no edit prompt for task {task.name!r} (and no 'default')")

    def _diffusion_settings(self, stage: str) -> dict[str, Any]:
        out: dict[str, Any] = {"image_format": self.image_format.record(), "seed_policy": self.seed_policy}
        if stage == "mental_image":
            out["size"] = self.edit_size
        if self.seed_policy == "released":
            out["seed"] = RELEASED_SEEDS[stage]
        return out

    def fingerprint(self) -> dict[str, Any]:
        assert self.editor is not None and self.t2i is not None and self.describer is not None
        return {
            "method": "paracosm",
            "encoder": self.clip.fingerprint(),
            "editor": self.editor.fingerprint(),
            "t2i": self.t2i.fingerprint(),
            "describer": self.describer.fingerprint(),
            "writer": lmm_record(self.writer) if self.writer else None,
            "prompts": {
                "edit": {k: p.record() for k, p in sorted(self.edit_prompts.items())},
                "describe_query": self.describe_query_prompt.record(),
                "describe_gallery": self.describe_gallery_prompt.record(),
                "circo_text": self.circo_text_prompt.record(),
            },
            "decoding": {
                "describe_query": self.describe_query_decoding.record(),
                "describe_gallery": self.describe_gallery_decoding.record(),
                "circo_text": self.circo_text_decoding.record(),
            },
            "diffusion": {s: self._diffusion_settings(s) for s in RELEASED_SEEDS},
            "options": {"lam": self.lam, "beta": self.beta, "circo_text": self.circo_text,
                        "seed_policy": self.seed_policy, "edit_size": self.edit_size},
            "imports": {
                "circo_text": self.imported_circo_text.record() if self.imported_circo_text else None
            },
        }

    def query_fusion(self, multi_mod: bool) -> fusion.VecSum:
        """q = lam * norm(V(I_m) + T(t_query)) + (1 - lam) * norm T(t_mod) (mean of both orders for FIQ)."""
        mod: fusion.VecNode = (fusion.MeanOver("mod_text") if multi_mod else fusion.Vec("mod_text", True))
        return fusion.VecSum(
            (
                (self.lam, fusion.VecSum(((1.0, fusion.Vec("mental_image")), (1.0, fusion.Vec("query_text"))),
                                         normalize_each=False, normalize_sum=True)),
                (1.0 - self.lam, mod),
            ),
            normalize_each=False,
            normalize_sum=False,
        )

    def gallery_fusion(self) -> fusion.VecSum:
        """phi = norm((1 - beta) norm V(I) + beta norm V(I_syn))."""
        return fusion.VecSum(((1.0 - self.beta, fusion.Vec("image")), (self.beta, fusion.Vec("synthetic"))),
                             normalize_each=True, normalize_sum=True)

    def score_expression(self, multi_mod: bool) -> fusion.Weighted:
        """The score as the paper's two similarity terms (what `query_fusion` evaluates in one product)."""
        q = self.query_fusion(multi_mod)
        phi = self.gallery_fusion()
        return fusion.Weighted(tuple((w, fusion.Sim(node, phi)) for w, node in q.terms))

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        fiq = _is_fashioniq(task)
        circo = _is_circo(task)
        return {
            "method": {
                "name": self.name,
                "kind": "paracosm",
                "query": "lam * norm(V(mental image) + T(its short description)) + (1 - lam) * norm T(t_mod)",
                "gallery": "norm((1 - beta) norm V(image) + beta norm V(synthetic twin of its description))",
                "t_mod": ("mean of T('c1 and c2') and T('c2 and c1')" if fiq else
                          ("imported file" if circo and self.imported_circo_text else
                           f"circo_text={self.circo_text}" if circo else "the task's query text")),
                "score": self.score_expression(fiq).record(),
                "evaluated_as": "one inner product <q, phi> (both terms share phi), exact search",
                "lam": self.lam,
                "beta": self.beta,
                "edit_prompt": self.edit_prompt(task).record(),
                "image_format": self.image_format.record(),
                "deviations": [
                    "unit-vector features: V(I_m) + T(t_query) sums unit vectors (the release sums raw CLIP "
                    "features)",
                    "prompts are cirbench's wording of the released structure (CIRR/FashionIQ edit prompts "
                    "and the CIRCO text prompt are unreleased)",
                    "images go through the encoder's own preprocessing (the release: SEARLE target-pad 1.25)",
                ],
                "search": {"top_k": ctx.top_k, "dtype": ctx.search_dtype, "backend": ctx.search_backend},
                **self.base_record(ctx),
            }
        }

    # ------------------------------------------------------------------------------------------ stages

    def _seed(self, stage: str, job: ArtifactJob) -> int:
        return RELEASED_SEEDS[stage] if self.seed_policy == "released" else job.seed

    def mental_image_job(self, task: Task, ctx: Context, store: ArtifactStore,
                         report: ImageStageReport) -> StageJob:
        """Per query: edit(reference resized to edit_size x edit_size, rendered edit prompt, seed)."""
        assert self.editor is not None
        editor = self.editor
        prompt = self.edit_prompt(task)
        rows: dict[str, tuple[Item, str]] = {}
        for q in task.queries:
            text = render(prompt, instruction=q.item.text or "",
                          shared_concept=str(q.meta.get("shared_concept", "")))
            rows[q.id] = (q.item, text)
        spec = ArtifactSpec("mental_image", artifact_component(editor.fingerprint()), prompt.sha256,
                            self._diffusion_settings("mental_image"), ctx.seed)
        size = self.edit_size

        def draw(jobs: Sequence[ArtifactJob]) -> list[Image.Image]:
            out = []
            for job in jobs:
                item, text = rows[job.id]
                ref = item.load_image().resize((size, size), Image.Resampling.BICUBIC)
                before = dict(getattr(editor, "stats", {}))
                with ctx.cost.timed("mental_image"):
                    (img,) = editor.edit(ref, [text], [self._seed("mental_image", job)])
                ctx.cost.add("mental_image", editor_calls=1, **_diffusion_grown(editor, before))
                out.append(img)
            return out

        items = [(qid, _sha(item.content_key(), text)) for qid, (item, text) in rows.items()]
        return StageJob(spec, items, image_maker(store, spec, draw, self.image_format, report))

    def description_job(self, stage: str, rows: Mapping[str, tuple[str, Path | bytes]], prompt: Prompt,
                        decoding: Decoding, ctx: Context, report: StageReport) -> StageJob:
        """Per image: the describer's one description (rows: id -> (content key, image file or bytes))."""
        assert self.describer is not None
        describer = self.describer
        spec = ArtifactSpec(stage, artifact_component(describer.fingerprint()), prompt.sha256,
                            decoding.record(), ctx.seed)

        def make(jobs: Sequence[ArtifactJob]) -> list[str]:
            images = [_read(rows[j.id][1]) for j in jobs]
            before = usage(describer)
            with ctx.cost.timed(stage):
                caps = describer.caption(images, prompt.text, decoding, [j.seed for j in jobs])
            after = usage(describer)
            grown = {k: after[k] - before.get(k, 0.0) for k in after if after[k] > before.get(k, 0.0)}
            ctx.cost.add(stage, **{describer.calls_per_caption: len(jobs)}, **grown)
            report.generated += len(jobs)
            return [c[0] for c in caps]

        return StageJob(spec, [(i, ck) for i, (ck, _) in rows.items()], make, batch_size=ctx.batch_size)

    def synthetic_job(self, descriptions: Mapping[str, str], ctx: Context, store: ArtifactStore,
                      report: ImageStageReport) -> StageJob:
        """Per gallery item: t2i(detailed description, seed); content = the description's hash."""
        assert self.t2i is not None
        t2i = self.t2i
        spec = ArtifactSpec("synthetic_image", artifact_component(t2i.fingerprint()),
                            self.describe_gallery_prompt.sha256, self._diffusion_settings("synthetic_image"),
                            ctx.seed)

        def draw(jobs: Sequence[ArtifactJob]) -> list[Image.Image]:
            out = []
            for job in jobs:
                before = dict(getattr(t2i, "stats", {}))
                with ctx.cost.timed("synthetic_image"):
                    (img,) = t2i.render([descriptions[job.id]], [self._seed("synthetic_image", job)])
                ctx.cost.add("synthetic_image", t2i_calls=1, **_diffusion_grown(t2i, before))
                out.append(img)
            return out

        items = [(gid, _sha(text)) for gid, text in descriptions.items()]
        return StageJob(spec, items, image_maker(store, spec, draw, self.image_format, report))

    def generate_gallery(self, task: Task, ctx: Context, store: ArtifactStore, *, shard: Shard | None = None,
                         reports: dict[str, StageReport] | None = None) -> dict[str, Path]:
        """gallery id -> its synthetic twin, for the items `shard` owns (description, then rendering).

        Both stages are keyed by the gallery item's id, so a shard's chain needs nothing from other shards;
        each shard runs on its own machine (`Shard.parse('i/n')`), a later eval reuses every image."""
        reports = reports if reports is not None else {}
        rows = {it.id: (it.content_key(), _image_source(it)) for it in task.corpus}
        drep = reports.setdefault("gallery_desc", StageReport("gallery_desc", ""))
        djob = self.description_job("gallery_desc", rows, self.describe_gallery_prompt,
                                    self.describe_gallery_decoding, ctx, drep)
        drep.namespace = djob.spec.namespace
        descriptions = {k: str(v) for k, v in djob.run(store, shard).items()}
        drep.items += len(descriptions)
        irep = ImageStageReport()
        sjob = self.synthetic_job(descriptions, ctx, store, irep)
        got = sjob.run(store)  # descriptions already hold only this shard's items
        srep = reports.setdefault("synthetic_image", StageReport("synthetic_image", sjob.spec.namespace))
        srep.items += len(got)
        srep.generated += irep.generated
        if irep.adopted:
            ctx.cost.add("synthetic_image", adopted=irep.adopted)
        return {i: image_path(store, sjob.spec, i, v) for i, v in got.items()}

    def mental_images(self, task: Task, ctx: Context, store: ArtifactStore,
                      reports: dict[str, StageReport]) -> dict[str, Path]:
        irep = ImageStageReport()
        job = self.mental_image_job(task, ctx, store, irep)
        got = job.run(store)
        rep = reports.setdefault("mental_image", StageReport("mental_image", job.spec.namespace))
        rep.items += len(got)
        rep.generated += irep.generated
        if irep.adopted:
            ctx.cost.add("mental_image", adopted=irep.adopted)
        return {i: image_path(store, job.spec, i, v) for i, v in got.items()}

    def mod_texts(self, task: Task, ctx: Context, store: ArtifactStore,
                  reports: dict[str, StageReport]) -> dict[str, list[str]]:
        """query id -> t_mod text(s): both caption orders on FashionIQ, the CIRCO text, else the task's."""
        if _is_fashioniq(task):
            out = {}
            for q in task.queries:
                caps = q.meta.get("captions")
                if not isinstance(caps, list) or len(caps) != 2:
                    raise ValueError(f"FashionIQ query {q.id!r} has no pair of captions")
                main, alts = join_captions(str(caps[0]), str(caps[1]), "both-orders")
                out[q.id] = [main, *alts]
            return out
        if not _is_circo(task):
            return {q.id: [q.item.text or ""] for q in task.queries}
        if self.imported_circo_text is not None:
            imp = self.imported_circo_text
            reports["circo_text"] = StageReport("circo_text", "", len(task.queries), 0, imp.record())
            return {q.id: [str(imp.get(q.id))] for q in task.queries}
        if self.circo_text == "protocol":
            return {q.id: [q.item.text or ""] for q in task.queries}
        if self.writer is None:
            raise ValueError("circo_text: lmm needs components.writer (an LMM), or options.circo_text: "
                             "protocol, or imports.circo_text")
        return {k: [v] for k, v in self._circo_texts(task, ctx, store, reports).items()}

    def _circo_texts(self, task: Task, ctx: Context, store: ArtifactStore,
                     reports: dict[str, StageReport]) -> dict[str, str]:
        assert self.writer is not None
        writer, prompt, decoding = self.writer, self.circo_text_prompt, self.circo_text_decoding
        rows = {q.id: (str(q.meta.get("relative_caption", q.item.text or "")),
                       str(q.meta.get("shared_concept", ""))) for q in task.queries}
        spec = ArtifactSpec("circo_text", artifact_component(writer.fingerprint()), prompt.sha256,
                            decoding.record(), ctx.seed)
        report = reports.setdefault("circo_text", StageReport("circo_text", spec.namespace))

        def make(jobs: Sequence[ArtifactJob]) -> list[str]:
            reqs = [LMMRequest(parts=(render(prompt, instruction=rows[j.id][0],
                                             shared_concept=rows[j.id][1]),),
                               system=prompt.system, max_tokens=decoding.max_tokens,
                               temperature=decoding.temperature, json_mode=False,
                               seed=j.seed if decoding.sampling else None) for j in jobs]
            before = usage(writer)
            with ctx.cost.timed("circo_text"):
                replies = writer.complete_many(reqs)
            after = usage(writer)
            grown = {k: after[k] - before.get(k, 0.0) for k in after if after[k] > before.get(k, 0.0)}
            ctx.cost.add("circo_text", lmm_calls=len(reqs), **grown)
            report.generated += len(jobs)
            out = []
            for reply, job in zip(replies, jobs, strict=True):
                if isinstance(reply, LMMError):
                    raise LMMError(f"circo_text of {job.id!r}: {reply}", transient=reply.transient)
                out.append(" ".join(str(reply).split()))
            return out

        got = store.generate(spec, [(i, _sha(*r)) for i, r in rows.items()], make, batch_size=ctx.batch_size)
        report.items += len(got)
        return {k: str(v) for k, v in got.items()}

    # ------------------------------------------------------------------------------------------ retrieval

    def image_vectors(self, paths: Sequence[Path], ctx: Context, stage: str, label: str) -> np.ndarray:
        items = [Item(f"{stage}:{p.stem}", image=p) for p in paths]
        with ctx.cost.timed(stage):
            vecs, stats = encode(self.clip, items, "document", None, ctx, label)
        ctx.cost.add(stage, image_encodes=int(stats.get("encoded", len(items))))
        return vecs

    def retrieve(self, task: Task, ctx: Context) -> Run:
        reports: dict[str, StageReport] = {}
        fiq = _is_fashioniq(task)
        with open_store(ctx, self.artifacts_dir) as store:  # a --no-cache store is deleted on leaving
            mental = self.mental_images(task, ctx, store, reports)
            mrep = reports.setdefault("mental_desc", StageReport("mental_desc", ""))
            mjob = self.description_job(
                "mental_desc", {q.id: (_file_key(mental[q.id]), mental[q.id]) for q in task.queries},
                self.describe_query_prompt, self.describe_query_decoding, ctx, mrep)
            mrep.namespace = mjob.spec.namespace
            qdesc = {k: str(v) for k, v in mjob.run(store).items()}
            mrep.items += len(qdesc)
            mods = self.mod_texts(task, ctx, store, reports)
            synthetic = self.generate_gallery(task, ctx, store, reports=reports)

            qids = [q.id for q in task.queries]
            v_mental = self.image_vectors([mental[i] for i in qids], ctx, "encode_mental",
                                          "encoding mental images")
            t_query = self.text_vectors([qdesc[i] for i in qids], ctx, "encoding mental-image descriptions")
            flat = [t for i in qids for t in mods[i]]
            t_flat = self.text_vectors(flat, ctx, "encoding modification texts")
            t_mod: list[np.ndarray] = []
            at = 0
            for i in qids:
                t_mod.append(t_flat[at:at + len(mods[i])])
                at += len(mods[i])
            v_real = self.gallery_vectors(task, ctx)
            v_syn = self.image_vectors([synthetic[it.id] for it in task.corpus], ctx, "encode_synthetic",
                                       "encoding synthetic gallery images")
        qfeats: dict[str, Any] = {"mental_image": v_mental, "query_text": t_query,
                                  "mod_text": t_mod if fiq else np.stack([m[0] for m in t_mod])}
        qv = self.query_fusion(fiq).vectors(qfeats).astype(np.float32)
        cv = self.gallery_fusion().vectors({"image": v_real, "synthetic": v_syn}).astype(np.float32)
        with ctx.cost.timed("search"):
            run = search_task(task, qv, cv, ctx.top_k, ctx)
        self.finish_cost(task, ctx, reports, gallery_stages=GALLERY_STAGES)
        return run


def _is_fashioniq(task: Task) -> bool:
    return task.name.split(":")[0].startswith("fashioniq")


def _is_circo(task: Task) -> bool:
    return task.name.split(":")[0].startswith("circo")


def _image_source(item: Item) -> Path | bytes:
    if isinstance(item.image, Path | bytes):
        return item.image
    raise ValueError(f"gallery item {item.id!r} has no image to describe")


def _read(src: Path | bytes) -> bytes:
    return src if isinstance(src, bytes) else src.read_bytes()


def _file_key(path: Path) -> str:
    """A generated image's content key: its stored name is its artifact key (content-addressed)."""
    return path.stem


__all__ = ["CIRCO_TEXTS", "DEFAULT_EDIT_PROMPTS", "GALLERY_STAGES", "RELEASED_SEEDS", "SEED_POLICIES", "SPEC",
           "Paracosm", "StageJob"]
