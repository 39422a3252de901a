"""What the caption-and-rewrite methods (CIReVL, LDRE, ...) share: the artifact stages, the text and gallery
vectors, the search, and the record of how the run was made.

Stages read and write the `ArtifactStore` (per item, keyed by component + prompt + decoding + per-item seed +
content), so a killed run resumes without asking a model twice and a shard's output is the same as the
unsharded run's. Each stage charges `Context.cost` with what it really spent in this run: model calls,
tokens in and out, seconds, and how many artifacts it generated or found already made. Vectors go through
the embedding cache like a dense eval's; the search is the dense retriever's (`search_task`), so galleries,
exclusions and candidate subsets follow the task's protocol in exactly one place.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cirbench.core.cache import default_cache_dir
from cirbench.core.types import Item, Task
from cirbench.llm.base import LMM, LMMError, LMMRequest
from cirbench.models.base import Encoder, check_modalities
from cirbench.retrieval.base import Context
from cirbench.retrieval.dense import Dense, encode
from cirbench.retrieval.methods.artifacts import ArtifactJob, ArtifactSpec, ArtifactStore, ImportedArtifacts
from cirbench.retrieval.methods.components import Captioner, Decoding, library_versions, usage
from cirbench.retrieval.methods.prompts import Prompt

MARKER = "Edited Description:"
SEED_RULE = "per item: sha256(base seed, stage, item id) (cirbench.retrieval.methods.artifacts.item_seed)"


def parse_edited(reply: str) -> str | None:
    """The text after the first 'Edited Description:' (on its line), or None when the reply has none."""
    for line in reply.splitlines():
        at = line.find(MARKER)
        if at >= 0:
            text = line[at + len(MARKER) :].strip()
            return text or None
    return None


def rewrite_request(
    prompt: Prompt, caption: str, instruction: str, decoding: Decoding, seed: int | None
) -> LMMRequest:
    """The rewrite turn: the prompt, then 'Image Content: ...' and 'Instruction: ...' lines."""
    return LMMRequest(
        parts=(f"{prompt.text}\nImage Content: {caption}\nInstruction: {instruction}",),
        system=prompt.system,
        max_tokens=decoding.max_tokens,
        temperature=decoding.temperature,
        json_mode=False,
        seed=seed,
    )


def image_bytes(item: Item) -> bytes:
    if isinstance(item.image, bytes):
        return item.image
    if isinstance(item.image, Path):
        return item.image.read_bytes()
    raise ValueError(f"query {item.id!r} has no reference image to caption")


def lmm_record(lmm: Any) -> dict[str, Any]:
    """An LMM's fingerprint with the provider's host (never the full URL's query or credentials)."""
    fp = dict(lmm.fingerprint())
    url = fp.get("base_url")
    if isinstance(url, str):
        parts = urlsplit(url)
        fp["base_url"] = (
            f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        )
        fp["host"] = parts.hostname
    return fp


def artifact_component(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A component's fingerprint as it enters artifact keys: without where it was served from (`base_url`,
    `host`), which the result records but which does not change an answer; the model, its snapshot,
    revision and options do."""
    return {k: artifact_component(v) if isinstance(v, Mapping) else v
            for k, v in fingerprint.items() if k not in ("base_url", "host")}


@contextmanager
def open_store(ctx: Context, root: Path | None) -> Iterator[ArtifactStore]:
    """The artifact store: `root`, else `<cache>/artifacts`; with --no-cache a temporary one."""
    if root is not None:
        yield ArtifactStore(root)
    elif ctx.use_cache:
        yield ArtifactStore((ctx.cache_dir or default_cache_dir()) / "artifacts")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="cirbench-artifacts-"))
        try:
            yield ArtifactStore(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class StageReport:
    """How one stage's artifacts were obtained in this run (recorded with the result's encode stats)."""

    stage: str
    namespace: str
    items: int = 0
    generated: int = 0
    imported: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace[:24],
            "items": self.items,
            "generated": self.generated,
            "reused": self.items - self.generated,
        }
        if self.imported is not None:
            out = {"items": self.items, "imported": self.imported}
        return out


def _charge(ctx: Context, stage: str, component: Any, before: Mapping[str, float], **counts: float) -> None:
    after = usage(component)
    grown = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
    ctx.cost.add(stage, **counts, **grown)


def caption_stage(
    task: Task,
    captioner: Captioner | None,
    prompt: Prompt,
    decoding: Decoding,
    store: ArtifactStore,
    ctx: Context,
    *,
    stage: str,
    imported: ImportedArtifacts | None,
    reports: dict[str, StageReport],
) -> dict[str, list[str]]:
    """query id -> `decoding.n` captions of its reference image (generated once per distinct image).

    Imported captions are looked up by query id (released files are keyed by query)."""
    if imported is not None:
        out = {q.id: _as_list(imported.get(q.id), decoding.n, imported, q.id) for q in task.queries}
        reports[stage] = StageReport(stage, "", len(out), 0, imported.record())
        return out
    if captioner is None:
        raise ValueError(f"stage {stage!r} needs a captioner (components.captioner) or an import")
    by_ref: dict[str, Item] = {}
    ref_of: dict[str, str] = {}
    for q in task.queries:
        ref = q.reference_id or q.id
        ref_of[q.id] = ref
        by_ref.setdefault(ref, Item(ref, image=q.item.image))
    got = caption_images(by_ref, captioner, prompt, decoding, store, ctx, stage=stage, reports=reports)
    return {qid: got[ref] for qid, ref in ref_of.items()}


def caption_images(
    images: Mapping[str, Item],
    captioner: Captioner,
    prompt: Prompt,
    decoding: Decoding,
    store: ArtifactStore,
    ctx: Context,
    *,
    stage: str,
    reports: dict[str, StageReport],
) -> dict[str, list[str]]:
    """image id -> `decoding.n` captions (reference images of the queries, or gallery items: CVSI)."""
    spec = ArtifactSpec(stage, artifact_component(captioner.fingerprint()), prompt.sha256, decoding.record(),
                        ctx.seed)
    report = reports.setdefault(stage, StageReport(stage, spec.namespace))

    def make(jobs: Sequence[ArtifactJob]) -> list[list[str]]:
        before = usage(captioner)
        with ctx.cost.timed(stage):
            caps = captioner.caption(
                [image_bytes(images[j.id]) for j in jobs], prompt.text, decoding, [j.seed for j in jobs]
            )
        report.generated += len(jobs)
        _charge(
            ctx,
            stage,
            captioner,
            before,
            **{captioner.calls_per_caption: len(jobs) * decoding.n},
            captions=len(jobs) * decoding.n,
        )
        return caps

    got = store.generate(
        spec, [(i, it.content_key()) for i, it in images.items()], make, batch_size=ctx.batch_size
    )
    report.items += len(got)
    return {i: [str(c) for c in got[i]] for i in images}


def rewrite_stage(
    rows: Sequence[tuple[str, str, str]],
    lmm: LMM,
    prompt: Prompt,
    decoding: Decoding,
    store: ArtifactStore,
    ctx: Context,
    *,
    stage: str,
    reports: dict[str, StageReport],
    parse: bool = True,
) -> dict[str, str]:
    """(item id, caption, instruction) rows -> edited description per item id.

    As in the released CIReVL code, a reply without an 'Edited Description:' line falls back to the raw
    instruction (counted as `parse_fallbacks`). With `parse=False` the whole reply (whitespace collapsed) is
    the artifact (CVSI's released code keeps the reply as it is)."""
    spec = ArtifactSpec(stage, artifact_component(lmm.fingerprint()), prompt.sha256, decoding.record(),
                        ctx.seed)
    report = reports.setdefault(stage, StageReport(stage, spec.namespace))
    by_id = {r[0]: r for r in rows}

    def make(jobs: Sequence[ArtifactJob]) -> list[str]:
        reqs = [
            rewrite_request(
                prompt, by_id[j.id][1], by_id[j.id][2], decoding, j.seed if decoding.sampling else None
            )
            for j in jobs
        ]
        before = usage(lmm)
        with ctx.cost.timed(stage):
            replies = lmm.complete_many(reqs)
        _charge(ctx, stage, lmm, before, lmm_calls=len(reqs))
        report.generated += len(jobs)
        out = []
        for reply, job in zip(replies, jobs, strict=True):
            if isinstance(reply, LMMError):
                raise LMMError(f"{stage} of {job.id!r}: {reply}", transient=reply.transient)
            edited = parse_edited(reply) if parse else (" ".join(reply.split()) or None)
            if edited is None:
                ctx.cost.add(stage, parse_fallbacks=1)
                edited = by_id[job.id][2]
            out.append(edited)
        return out

    items = [(i, hashlib.sha256(f"{cap}\x00{ins}".encode()).hexdigest()) for i, cap, ins in rows]
    got = store.generate(spec, items, make, batch_size=ctx.batch_size)
    report.items += len(got)
    return {k: str(v) for k, v in got.items()}


def _as_list(value: Any, n: int, imported: ImportedArtifacts, item_id: str) -> list[str]:
    from cirbench.core.types import DatasetError

    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DatasetError("expected a text or a list of texts", file=imported.path, record=item_id)
    if len(texts) != n:
        raise DatasetError(f"expected {n} texts, found {len(texts)}", file=imported.path, record=item_id)
    return list(texts)


@dataclass
class TextQueryMethod:
    """Base of methods whose query is text made from the reference image and retrieved against the gallery
    images with one dual encoder. Subclasses define `make_query_vectors` and their own records."""

    clip: Encoder
    """The dual encoder (text queries vs gallery images). Not called `encoder`: the result's model is the
    method, not this encoder."""
    artifacts_dir: Path | None = None
    encoding: dict[str, Any] = field(default_factory=dict)

    def prepare(self, task: Task) -> Task:
        check_modalities(self.clip.spec, {"query": "text", "corpus": task.metadata.corpus_modality})
        if not all(q.item.image is not None for q in task.queries):
            missing = next(q.id for q in task.queries if q.item.image is None)
            raise ValueError(
                f"this method captions each query's reference image, and query {missing!r} of "
                f"{task.name} has none"
            )
        return task

    def text_vectors(
        self, texts: Sequence[str], ctx: Context, label: str, stage: str = "encode_text"
    ) -> np.ndarray:
        """Unit text features (embedding cache as a dense eval's query side, no instruction)."""
        items = [Item(hashlib.sha256(t.encode()).hexdigest()[:16], text=t) for t in texts]
        with ctx.cost.timed(stage):
            vecs, stats = encode(self.clip, items, "query", None, ctx, label)
        ctx.cost.add(stage, text_encodes=int(stats.get("encoded", len(items))))
        return vecs

    def gallery_vectors(self, task: Task, ctx: Context) -> np.ndarray:
        dense = Dense(self.clip)
        with ctx.cost.timed("encode_gallery"):
            cv = dense.corpus_vectors(task, ctx)
        self.encoding["document"] = dense.encoding.get("document", {})
        ctx.cost.add("encode_gallery", image_encodes=int(self.encoding["document"].get("encoded", 0)))
        return cv

    def base_record(self, ctx: Context) -> dict[str, Any]:
        return {"seeds": {"base_seed": ctx.seed, "rule": SEED_RULE}, "libraries": library_versions()}

    def finish_cost(self, task: Task, ctx: Context, reports: Mapping[str, StageReport],
                    gallery_stages: Sequence[str] = ("encode_gallery",)) -> None:
        """Per-query and per-gallery-item means of what was spent, beside the stage totals.

        `gallery_stages` are charged to the gallery items (Paracosm's descriptions and synthetic images),
        every other stage to the queries."""
        self.encoding["artifacts"] = {s: r.record() for s, r in reports.items()}
        nq, ng = max(1, len(task.queries)), max(1, len(task.corpus))
        per_q: dict[str, float] = {}
        per_g: dict[str, float] = {}
        for stage, counters in ctx.cost.stages.items():
            if stage in ("per_query", "per_gallery_item"):
                continue
            into, n = (per_g, ng) if stage in gallery_stages else (per_q, nq)
            for k, v in counters.items():
                into[k] = into.get(k, 0.0) + v / n
        ctx.cost.stages["per_query"] = per_q
        ctx.cost.stages["per_gallery_item"] = per_g


__all__ = [
    "MARKER",
    "SEED_RULE",
    "StageReport",
    "TextQueryMethod",
    "caption_images",
    "caption_stage",
    "image_bytes",
    "lmm_record",
    "open_store",
    "parse_edited",
    "rewrite_request",
    "rewrite_stage",
]
