"""XR (Yang, Pang, Yuan: "Cross-Modal Agents for Composed Image Retrieval", WWW 2026, arXiv 2601.14245).

Stage 1, the imagination and similarity agents (a Retriever):
- every gallery image (and every reference image) gets an MLLM caption, cached per item;
- an LLM that sees the reference *caption* (never its image) and the instruction writes
  v1: atomic operations plus three target descriptions, and v2: a structured scene analysis, which a
  rewriter turns into one caption; aug is v1's three descriptions plus v2's caption;
- per description d and gallery item x: s_d(x) = (1 - tau) cos(T(d), V(x)) + tau cos(T(d), T(cap(x)));
  a variant's score is the mean of s_d over its descriptions; the three variants' rankings are fused by
  reciprocal rank, sum_v 1 / (k + rank_v(x)), k = 60.
Stage 2, the question agents (`XRQuestions`, a Reranker of the chain): the LLM turns v1's operations into
yes/no questions with expected answers; for each of the top-K candidates an MLLM answers each question on
the candidate image (qa), and an LLM answers it from the candidate's cached caption (caption); a
candidate's head score is (0.5 count_qa + 0.5 count_cap) x minmax(s1) over the head, the tail keeps its
order (TAIL_RULE).
Stage 3 (`XRPairwise`, off by default as released): an MLLM sees the reference and the candidate; every
candidate it accepts moves to the front, in its current order.

Released-code behaviours kept as named options (methods.md §2, seeds-2026-12.md §2.2): `stage2_source`
(stage 2 reranks the aug list, not the fused one, by default), `exclude_reference` (the release keeps the
reference in CIRR's full ranking; the official protocol, the default here, removes it), `num_questions`
(all by default, as released; the paper's best is about 3). Every model call is an artifact keyed by the
component, prompt, decoding and the exact request, so a rerun asks nothing and a killed run resumes.
The prompts are cirbench's own wording (prompts.py: xr-*).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Item, Task
from cirbench.llm.base import LMM, LMMError, LMMRequest, extract_json
from cirbench.retrieval.base import ComponentSpec, Context, Retriever, rerank_head
from cirbench.retrieval.dense import encode
from cirbench.retrieval.methods import fusion
from cirbench.retrieval.methods.artifacts import ArtifactJob, ArtifactSpec, ArtifactStore
from cirbench.retrieval.methods.common import (
    StageReport,
    TextQueryMethod,
    _charge,
    artifact_component,
    image_bytes,
    lmm_record,
    open_store,
)
from cirbench.retrieval.methods.components import Captioner, Decoding, usage
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt
from cirbench.retrieval.methods.scored_search import first_ranks_after_rerank, search_scores

VARIANTS = ("v1", "v2", "aug")
SOURCES = ("aug", "fused", "v1", "v2")
MODES = ("both", "qa", "caption")
STAGES = ("s1", "s2", "s3")
EMPTY_INSTRUCTION = "the same image"
"""What an empty CIRR caption becomes (as in the released code)."""

PROMPT_STAGES: Mapping[str, str] = {
    "caption": "xr-caption",
    "imagine_text": "xr-imagine-text",
    "imagine_visual": "xr-imagine-visual",
    "rewrite": "xr-rewrite",
    "questions": "xr-questions",
    "verify": "xr-verify",
    "judge": "xr-judge",
    "pairwise": "xr-pairwise",
}
"""XR's stages and their default prompt ids."""

DEFAULT_DECODING: Mapping[str, Decoding] = {
    "caption": Decoding(max_tokens=256),
    "imagine_text": Decoding(max_tokens=1024),
    "imagine_visual": Decoding(max_tokens=1024),
    "rewrite": Decoding(max_tokens=128),
    "questions": Decoding(max_tokens=512),
    "verify": Decoding(max_tokens=8),
    "judge": Decoding(max_tokens=8),
    "pairwise": Decoding(max_tokens=64),
}
"""temperature 0 everywhere (the release's vLLM default); the caption's 256 tokens are the release's."""

GALLERY_STAGES = ("gallery_caption", "encode_gallery", "encode_gallery_captions")
"""Stages whose cost is per gallery item (the rest are per query)."""

SPEC = ComponentSpec(
    name="xr",
    description="XR: MLLM gallery captions, LLM imagination (v1, v2, aug) -> hybrid image/caption "
    "similarity -> RRF; question agents verify the top K",
    options={
        "components.encoder": "str, required: the CLIP-family dual encoder (cirbench model name)",
        "components.captioner": "mapping, required: the MLLM captioner ({kind: lmm, lmm: {...}} or blip2)",
        "components.reasoner": "LMM, required: v1, v2, the rewrite and the questions (text only)",
        "components.verifier": "LMM, required with stage s2 in qa/both mode: yes/no on the candidate image",
        "components.judge": "LMM, default the reasoner: yes/no from the candidate's caption",
        "components.evaluator": "LMM, default the verifier: stage s3's two-image check",
        "options.tau": "float, 0.15: the caption term's weight in the hybrid similarity",
        "options.rrf_k": "float, 60: the RRF constant",
        "options.stages": "str, 's1,s2' (as released): which stages run; add s3 for the pairwise check",
        "options.stage2_source": "aug|fused|v1|v2, aug (as released): the stage-1 list the chain reranks",
        "options.top_k": "int, 100: candidates stage 2 verifies",
        "options.num_questions": "int, 0 = all (as released; the paper's best is about 3)",
        "options.s2_mode": "both|qa|caption, both: which verifiers count",
        "options.alpha": "int, 100: candidates stage 3 checks",
        "options.exclude_reference": "bool, true (the official protocol); false keeps the reference in "
        "the full ranking as XR's released code does (the candidate subset still drops it)",
    },
)


# ------------------------------------------------------------------------------------------ parsing


def instruction(task: Task, row: int) -> str:
    text = (task.queries[row].item.text or "").strip()
    return text or EMPTY_INSTRUCTION


@dataclass(frozen=True)
class Imagined:
    """v1's parse: the atomic operations and the three target descriptions (or the fallback)."""

    operations: tuple[tuple[str, str], ...]
    descriptions: tuple[str, ...]
    parsed: bool


def parse_imagined(reply: str, instruction_text: str) -> Imagined:
    """v1's JSON; a reply without usable JSON falls back to the instruction (one operation, one text)."""
    try:
        obj = extract_json(reply)
        ops = tuple((str(t), " ".join(str(s).split())) for t, s in obj["operations"] if str(s).strip())
        descs = tuple(" ".join(str(d).split()) for d in obj["descriptions"] if str(d).strip())
        if descs:
            return Imagined(ops, descs, True)
    except (ValueError, TypeError, KeyError):
        pass
    return Imagined((("Modification", instruction_text),), (instruction_text,), False)


@dataclass(frozen=True)
class Question:
    text: str
    expected: bool


def parse_questions(reply: str) -> list[Question] | None:
    """The questions JSON ({"questions": [{"question", "answer"}]} or the bare list); None if unusable."""
    try:
        obj = extract_json(reply)
    except ValueError:
        return None
    items = obj.get("questions") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        return None
    out = []
    for it in items:
        if not isinstance(it, dict) or not str(it.get("question", "")).strip():
            continue
        ans = parse_yes_no(str(it.get("answer", "")))
        if ans is not None:
            out.append(Question(" ".join(str(it["question"]).split()), ans))
    return out


_YES_NO = re.compile(r"\b(yes|no)\b", re.I)
_ANSWER = re.compile(r"answer\s*:\s*(yes|no)\b", re.I)


def parse_yes_no(reply: str) -> bool | None:
    """'ANSWER: Yes' if present, else the first yes/no word; None when there is none."""
    m = _ANSWER.search(reply) or _YES_NO.search(reply)
    return None if m is None else m.group(1).lower() == "yes"


# ------------------------------------------------------------------------------------------ scoring


def hybrid_expression(variant: str, tau: float) -> fusion.Weighted:
    """s(x) = mean over the variant's descriptions d of (1 - tau) cos(T(d), V(x)) + tau cos(T(d), T(cap x)).

    The mean of cosines is the dot product with the mean of the unit description vectors (not
    re-normalised), so it is one MeanOver per side of each term."""
    desc = fusion.MeanOver(variant, normalize_each=True, normalize_result=False)
    return fusion.Weighted(((1.0 - tau, fusion.Sim(desc, fusion.Vec("image", normalize=True))),
                            (tau, fusion.Sim(desc, fusion.Vec("caption", normalize=True)))))


def rrf_expression(k: float) -> fusion.RRF:
    return fusion.RRF(tuple(fusion.Scores(v) for v in VARIANTS), k=k)


def stage1_scores(queries: Mapping[str, Sequence[np.ndarray]], gallery: Mapping[str, np.ndarray],
                  allowed: np.ndarray, tau: float, k: float) -> dict[str, np.ndarray]:
    """Per variant and fused (rows x gallery) scores; items a query may not rank are -inf in every list,
    so the RRF ranks count only the allowed items."""
    out: dict[str, np.ndarray] = {}
    for v in VARIANTS:
        s = hybrid_expression(v, tau).scores({v: queries[v]}, gallery)
        out[v] = np.where(allowed, s, -np.inf)
    fused = rrf_expression(k).scores(out, {})
    out["fused"] = np.where(allowed, fused, -np.inf)
    return out


def verification_scores(s1: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Stage 2's head score: count x minmax(s1) over the head (rows x K); the last of a row gets 0."""
    expr = fusion.Product(fusion.Scores("counts"), fusion.MinMax(fusion.Scores("s1")))
    return expr.scores({"counts": counts, "s1": s1}, {})


def stage2_counts(qa: np.ndarray | None, cap: np.ndarray | None) -> np.ndarray:
    """0.5 count_qa + 0.5 count_cap with both verifiers, else the one count."""
    if qa is not None and cap is not None:
        return 0.5 * qa + 0.5 * cap
    one = qa if qa is not None else cap
    assert one is not None
    return one


def valid_scores(head: Run) -> np.ndarray:
    """The head's scores with -1 pads set to their row's lowest real score, so that min-max runs over the
    real candidates only (a gallery smaller than K pads the head)."""
    valid = head.indices >= 0
    s = np.where(valid, head.scores, np.inf).astype(np.float64)
    low = np.where(valid.any(axis=1, keepdims=True), s.min(axis=1, keepdims=True), 0.0)
    return np.where(valid, s, low)


def reorder_head(head: Run, new_scores: np.ndarray) -> Run:
    """Each row of the head sorted by `new_scores`, ties keeping the incoming order; -1 pads stay last."""
    idx = head.indices.copy()
    sc = np.where(idx >= 0, new_scores, -np.inf)
    order = np.argsort(-sc, axis=1, kind="stable")
    return replace(head, indices=np.take_along_axis(idx, order, 1),
                   scores=np.take_along_axis(sc, order, 1).astype(np.float32))


def move_to_front(head: Run, accepted: np.ndarray) -> Run:
    """Stage 3: accepted candidates first, each group in its current order; score = accepted + minmax(s)."""
    mm = fusion.MinMax(fusion.Scores("s")).scores({"s": valid_scores(head)}, {})
    order = np.argsort(~accepted, axis=1, kind="stable")
    new = np.where(head.indices >= 0, accepted.astype(np.float64) + mm, -np.inf)
    return replace(head, indices=np.take_along_axis(head.indices, order, 1),
                   scores=np.take_along_axis(new, order, 1).astype(np.float32))


# ------------------------------------------------------------------------------------------ model calls


@dataclass(frozen=True)
class Ask:
    """One request of a stage: its artifact id, its text and the images sent after it."""

    id: str
    text: str
    images: tuple[Item, ...] = ()

    def content_key(self) -> str:
        h = hashlib.sha256(self.text.encode("utf-8"))
        for it in self.images:  # an image's key, not its item's (whose text the request does not carry)
            h.update(b"\x00" + Item(it.id, image=it.image).content_key().encode())
        return h.hexdigest()


def ask_stage(asks: Sequence[Ask], lmm: LMM, prompt: Prompt, decoding: Decoding, store: ArtifactStore,
              ctx: Context, *, stage: str, reports: dict[str, StageReport]) -> dict[str, str]:
    """artifact id -> raw reply, asking the model only for what the store lacks (one record per reply)."""
    spec = ArtifactSpec(stage, artifact_component(lmm.fingerprint()), prompt.sha256, decoding.record(),
                        ctx.seed)
    report = reports.setdefault(stage, StageReport(stage, spec.namespace))
    by_id = {a.id: a for a in asks}

    def make(jobs: Sequence[ArtifactJob]) -> list[str]:
        reqs = [LMMRequest(parts=(by_id[j.id].text, *(image_bytes(it) for it in by_id[j.id].images)),
                           system=prompt.system, max_tokens=decoding.max_tokens,
                           temperature=decoding.temperature, top_p=decoding.top_p, json_mode=False,
                           seed=j.seed if decoding.sampling else None) for j in jobs]
        before = usage(lmm)
        with ctx.cost.timed(stage):
            replies = lmm.complete_many(reqs)
        _charge(ctx, stage, lmm, before, lmm_calls=len(reqs))
        report.generated += len(jobs)
        for reply, job in zip(replies, jobs, strict=True):
            if isinstance(reply, LMMError):
                raise LMMError(f"XR {stage} of {job.id!r}: {reply}", transient=reply.transient)
        return [str(r) for r in replies]

    got = store.generate(spec, [(a.id, a.content_key()) for a in by_id.values()], make,
                         batch_size=ctx.batch_size)
    report.items += len(got)
    return {k: str(v) for k, v in got.items()}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


# ------------------------------------------------------------------------------------------ stage 1


@dataclass
class XRState:
    """What stage 1 leaves for the chain: per query its reference caption and v1 parse; per corpus item
    its caption; and the stage reports, which the rerankers extend."""

    ref_captions: dict[str, str]
    imagined: dict[str, Imagined]
    gallery_captions: dict[str, str]
    reports: dict[str, StageReport]


@dataclass
class XR(TextQueryMethod):
    """Stage 1 of XR as a Retriever; `rerankers` holds the stages 2 and 3 its config asks for."""

    captioner: Captioner | None = None
    reasoner: LMM | None = None
    verifier: LMM | None = None
    judge: LMM | None = None
    evaluator: LMM | None = None
    prompts: Mapping[str, Prompt] = field(default_factory=lambda: {s: BUILTIN[p] for s, p in
                                                                    PROMPT_STAGES.items()})
    decoding: Mapping[str, Decoding] = field(default_factory=lambda: dict(DEFAULT_DECODING))
    tau: float = 0.15
    rrf_k: float = 60.0
    stages: tuple[str, ...] = ("s1", "s2")
    stage2_source: str = "aug"
    top_k: int = 100
    num_questions: int = 0
    s2_mode: str = "both"
    alpha: int = 100
    exclude_reference: bool = True
    name: str = "xr"
    spec: ComponentSpec = field(default_factory=lambda: SPEC)
    state: XRState | None = None
    rerankers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from cirbench.core.options import did_you_mean

        for value, known, what in ((self.stage2_source, SOURCES, "stage2_source"),
                                   (self.s2_mode, MODES, "s2_mode")):
            if value not in known:
                raise ValueError(f"options.{what}: {value!r} is not one of {', '.join(known)}"
                                 f"{did_you_mean(value, known)}")
        for s in self.stages:
            if s not in STAGES:
                raise ValueError(f"options.stages: unknown stage {s!r}{did_you_mean(s, STAGES)}; "
                                 f"stages: {', '.join(STAGES)}")
        if "s1" not in self.stages or ("s3" in self.stages and "s2" not in self.stages):
            raise ValueError("options.stages: s1 always runs, and s3 follows s2 (e.g. 's1,s2,s3')")
        if not 0.0 <= self.tau <= 1.0 or self.rrf_k < 0 or self.top_k < 1 or self.alpha < 1 \
                or self.num_questions < 0:
            raise ValueError("options: need 0 <= tau <= 1, rrf_k >= 0, top_k >= 1, alpha >= 1, "
                             "num_questions >= 0")
        if self.captioner is None or self.reasoner is None:
            raise ValueError("xr needs components.captioner (the MLLM captioner) and components.reasoner")
        if self.judge is None:
            self.judge = self.reasoner
        if "s2" in self.stages and self.s2_mode in ("both", "qa") and self.verifier is None:
            raise ValueError(f"xr stage s2 in mode {self.s2_mode!r} needs components.verifier (an MLLM)")
        if self.evaluator is None:
            self.evaluator = self.verifier
        if "s3" in self.stages and self.evaluator is None:
            raise ValueError("xr stage s3 needs components.evaluator (or components.verifier)")
        for stage, d in self.decoding.items():
            if d.n != 1:
                raise ValueError(f"decoding.{stage}.n: xr makes one answer per request (n: 1)")
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)
        self.rerankers = []
        if "s2" in self.stages:
            self.rerankers.append(XRQuestions(self, depth=self.top_k))
        if "s3" in self.stages:
            self.rerankers.append(XRPairwise(self, depth=self.alpha))

    @property
    def returned_list(self) -> str:
        """The stage-1 list the retriever returns: stage 2's source when s2 runs, else the fused one."""
        return self.stage2_source if "s2" in self.stages else "fused"

    def prepare(self, task: Task) -> Task:
        task = super().prepare(task)
        if self.exclude_reference or not task.protocol.exclude_reference:
            return task
        notes = {**task.protocol.notes, "reference": "kept in the full ranking as XR's released code does "
                 "(xr option exclude_reference: false): NOT the official protocol; the candidate subset "
                 "still drops it, as XR's --subset path does"}
        proto = replace(task.protocol, exclude_reference=False, notes=notes,
                        name=f"{task.protocol.name}+xr-reference-kept")
        return replace(task, protocol=proto)

    def fingerprint(self) -> dict[str, Any]:
        def lmm(x: LMM | None) -> Any:
            return lmm_record(x) if x is not None else None

        return {
            "method": "xr",
            "encoder": self.clip.fingerprint(),
            "captioner": self.captioner.fingerprint() if self.captioner else None,
            "reasoner": lmm(self.reasoner), "verifier": lmm(self.verifier), "judge": lmm(self.judge),
            "evaluator": lmm(self.evaluator),
            "prompts": {s: p.record() for s, p in sorted(self.prompts.items())},
            "decoding": {s: d.record() for s, d in sorted(self.decoding.items())},
            "options": self.options_record(),
        }

    def options_record(self) -> dict[str, Any]:
        return {"tau": self.tau, "rrf_k": self.rrf_k, "stages": list(self.stages),
                "stage2_source": self.stage2_source, "top_k": self.top_k,
                "num_questions": self.num_questions or "all", "s2_mode": self.s2_mode, "alpha": self.alpha,
                "exclude_reference": self.exclude_reference}

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        return {"method": {
            "name": self.name, "kind": "xr",
            "query": "LLM imaginations of the target from the reference's MLLM caption and the instruction "
                     "(no image on the query side)",
            "instruction": f"the task's query text per its protocol; an empty one becomes "
                           f"{EMPTY_INSTRUCTION!r}",
            "variant_score": hybrid_expression("<variant>", self.tau).record(),
            "fusion": rrf_expression(self.rrf_k).record(),
            "variants": {"v1": "v1's three target descriptions", "v2": "the rewriter's caption of v2",
                         "aug": "v1's descriptions and v2's caption"},
            "stage1_list_returned": self.returned_list,
            "ranking_rule": "per query within its gallery, minus its exclusions, before the RRF ranks; ties: "
                            "score desc, then corpus position asc",
            "candidate_subset": "ranked by the same list's scores",
            **self.options_record(),
            "search": {"depth": self.depth(ctx)},
            "prompts": {s: p.record() for s, p in sorted(self.prompts.items())},
            **self.base_record(ctx),
        }}

    def depth(self, ctx: Context) -> int:
        return max(ctx.top_k, self.top_k if "s2" in self.stages else 0,
                   self.alpha if "s3" in self.stages else 0)

    # -------------------------------------------------------------------------------------- the stages

    def gallery_captions(self, task: Task, ctx: Context, store: ArtifactStore,
                         reports: dict[str, StageReport]) -> tuple[dict[str, str], dict[str, str]]:
        """(corpus id -> caption, query id -> its reference's caption): one artifact per image; references
        that are gallery images (CIRR, FashionIQ) reuse the gallery's."""
        assert self.captioner is not None
        captioner = self.captioner
        prompt, dec = self.prompts["caption"], self.decoding["caption"]
        spec = ArtifactSpec("gallery_caption", artifact_component(captioner.fingerprint()), prompt.sha256,
                            dec.record(), ctx.seed)

        def run(items: Sequence[Item], stage: str) -> dict[str, str]:
            report = reports.setdefault(stage, StageReport(stage, spec.namespace))
            by_id = {it.id: it for it in items}

            def make(jobs: Sequence[ArtifactJob]) -> list[str]:
                before = usage(captioner)
                with ctx.cost.timed(stage):
                    caps = captioner.caption([image_bytes(by_id[j.id]) for j in jobs], prompt.text, dec,
                                             [j.seed for j in jobs])
                report.generated += len(jobs)
                _charge(ctx, stage, captioner, before, **{captioner.calls_per_caption: len(jobs)})
                return [c[0] for c in caps]

            keys = [(i, Item(i, image=it.image).content_key()) for i, it in by_id.items()]  # the image only
            got = store.generate(spec, keys, make, batch_size=ctx.batch_size)
            report.items += len(got)
            return {k: str(v) for k, v in got.items()}

        gallery = run(task.corpus, "gallery_caption")
        refs: dict[str, Item] = {}
        for q in task.queries:
            ref = q.reference_id or q.id
            refs.setdefault(ref, Item(ref, image=q.item.image))
        ref_caps = run(list(refs.values()), "ref_caption")
        return gallery, {q.id: ref_caps[q.reference_id or q.id] for q in task.queries}

    def imagine(self, task: Task, ctx: Context, store: ArtifactStore, ref_caps: Mapping[str, str],
                reports: dict[str, StageReport]) -> tuple[dict[str, Imagined], dict[str, str]]:
        """(query id -> v1's parse, query id -> v2's rewritten caption)."""
        assert self.reasoner is not None
        rows = [(q.id, ref_caps[q.id], instruction(task, i)) for i, q in enumerate(task.queries)]

        def ask(stage: str, texts: Mapping[str, str]) -> dict[str, str]:
            p = self.prompts[stage]
            asks = [Ask(qid, f"{p.text}\n{texts[qid]}") for qid in texts]
            assert self.reasoner is not None
            return ask_stage(asks, self.reasoner, p, self.decoding[stage], store, ctx, stage=stage,
                             reports=reports)

        inputs = {qid: f"Photo: {cap}\nRequest: {ins}" for qid, cap, ins in rows}
        v1 = ask("imagine_text", inputs)
        v2 = ask("imagine_visual", inputs)
        rewritten = ask("rewrite", {qid: f"Request: {ins}\nAnalysis: {' '.join(v2[qid].split())}"
                                    for qid, _, ins in rows})
        imagined = {qid: parse_imagined(v1[qid], ins) for qid, _, ins in rows}
        captions = {}
        for qid, _, ins in rows:
            text = " ".join(rewritten[qid].split())
            captions[qid] = text or ins
        fallbacks = sum(not im.parsed for im in imagined.values())
        self.encoding["parse"] = {"imagine_text_fallbacks": fallbacks,
                                  "rewrite_empty": sum(not rewritten[q].strip() for q in rewritten)}
        return imagined, captions

    def retrieve(self, task: Task, ctx: Context) -> Run:
        self.encoding = {}
        reports: dict[str, StageReport] = {}
        with open_store(ctx, self.artifacts_dir) as store:
            gallery_caps, ref_caps = self.gallery_captions(task, ctx, store, reports)
            imagined, v2_caps = self.imagine(task, ctx, store, ref_caps, reports)
        self.state = XRState(ref_caps, imagined, gallery_caps, reports)
        nq = len(task.queries)
        v1_texts = [list(imagined[q.id].descriptions) for q in task.queries]
        flat = [t for ts in v1_texts for t in ts] + [v2_caps[q.id] for q in task.queries]
        vecs = self.text_vectors(flat, ctx, "encoding imagined descriptions")
        at, v1_vecs = 0, []
        for ts in v1_texts:
            v1_vecs.append(vecs[at:at + len(ts)])
            at += len(ts)
        v2_vecs = [vecs[at + i:at + i + 1] for i in range(nq)]
        queries = {"v1": v1_vecs, "v2": v2_vecs,
                   "aug": [np.concatenate([a, b]) for a, b in zip(v1_vecs, v2_vecs, strict=True)]}
        image_v = self.gallery_vectors(task, ctx)
        cap_items = [Item(hashlib.sha256(gallery_caps[it.id].encode()).hexdigest()[:16],
                          text=gallery_caps[it.id]) for it in task.corpus]
        with ctx.cost.timed("encode_gallery_captions"):
            cap_v, stats = encode(self.clip, cap_items, "query", None, ctx, "encoding gallery captions")
        ctx.cost.add("encode_gallery_captions", text_encodes=int(stats.get("encoded", len(cap_items))))
        gallery = {"image": image_v, "caption": cap_v}
        source = self.returned_list

        def block(rows: Sequence[int], allowed: np.ndarray) -> np.ndarray:
            q = {v: [queries[v][r] for r in rows] for v in VARIANTS}
            return stage1_scores(q, gallery, allowed, self.tau, self.rrf_k)[source]

        with ctx.cost.timed("search"):
            run = search_scores(task, block, self.depth(ctx))
        finish_cost(task, ctx, self.encoding, reports)
        return run


def finish_cost(task: Task, ctx: Context, encoding: dict[str, Any],
                reports: Mapping[str, StageReport]) -> None:
    """Per-query and per-gallery-item means of what was spent (gallery stages per item, the rest per query),
    and each stage's generated/reused artifact counts."""
    encoding["artifacts"] = {s: r.record() for s, r in reports.items()}
    nq, ng = max(1, len(task.queries)), max(1, len(task.corpus))
    per_q: dict[str, float] = {}
    per_g: dict[str, float] = {}
    for stage, counters in ctx.cost.stages.items():
        if stage in ("per_query", "per_gallery_item"):
            continue
        into, n = (per_g, ng) if stage in GALLERY_STAGES else (per_q, nq)
        for k, v in counters.items():
            into[k] = into.get(k, 0.0) + v / n
    ctx.cost.stages["per_query"] = per_q
    ctx.cost.stages["per_gallery_item"] = per_g


def _xr_base(base: Retriever, owner: XR, who: str) -> XRState:
    if base is not owner or owner.state is None:
        raise ValueError(f"{who} reranks the run of the XR method that built it (cirbench eval --method xr)")
    return owner.state


# ------------------------------------------------------------------------------------------ stage 2


@dataclass
class XRQuestions:
    """XR's question agents over the head of the run: yes/no questions from v1's operations, answered on
    each candidate's image (verifier MLLM) and from its caption (judge LLM)."""

    owner: XR
    depth: int | None = 100
    spec: ComponentSpec = field(default_factory=lambda: ComponentSpec(
        name="xr-questions", description="XR stage 2: count of yes/no questions a candidate passes x "
        "minmax(stage-1 score) over the top K"))

    def fingerprint(self) -> dict[str, Any]:
        o = self.owner
        return {"reranker": "xr-questions", "depth": self.depth, "num_questions": o.num_questions or "all",
                "mode": o.s2_mode, "prompts": {s: o.prompts[s].record() for s in ("questions", "verify",
                                                                                   "judge")}}

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        o = self.owner
        return {"rerank": "xr-questions", "depth": self.depth, "mode": o.s2_mode,
                "num_questions": o.num_questions or "all",
                "score": "(0.5 count_qa + 0.5 count_caption) x minmax(s1) over the head"
                if o.s2_mode == "both" else f"count_{o.s2_mode} x minmax(s1) over the head",
                "count": "questions whose answer matches the expected one (an unparsable answer matches "
                         "none)",
                "ties": "the incoming order", "candidate_subset": "stage 1's (not reranked)"}

    def questions(self, task: Task, ctx: Context, store: ArtifactStore,
                  state: XRState) -> dict[str, list[Question]]:
        o = self.owner
        assert o.reasoner is not None
        p = o.prompts["questions"]
        asks = []
        for i, q in enumerate(task.queries):
            ops = state.imagined[q.id].operations or (("Modification", instruction(task, i)),)
            lines = "\n".join(f"{n}. {s}" for n, (_, s) in enumerate(ops, 1))
            asks.append(Ask(q.id, f"{p.text}\nStatements:\n{lines}"))
        got = ask_stage(asks, o.reasoner, p, o.decoding["questions"], store, ctx, stage="questions",
                        reports=state.reports)
        out, bad = {}, 0
        for q in task.queries:
            qs = parse_questions(got[q.id])
            if qs is None:
                bad += 1
                qs = []
            out[q.id] = qs[: o.num_questions] if o.num_questions else qs
        o.encoding.setdefault("parse", {})["questions_unparsable"] = bad
        return out

    def rerank(self, task: Task, run: Run, ctx: Context, base: Retriever) -> Run:
        o = self.owner
        state = _xr_base(base, o, "xr-questions")
        with open_store(ctx, o.artifacts_dir) as store:
            qs = self.questions(task, ctx, store, state)
            width = run.indices.shape[1] if self.depth is None else min(self.depth, run.indices.shape[1])
            pairs: list[tuple[int, int, int]] = []  # (row, head slot, question number)
            for r, q in enumerate(task.queries):
                for slot in range(width):
                    if run.indices[r, slot] >= 0:
                        pairs += [(r, slot, n) for n in range(len(qs[q.id]))]

            def key(r: int, slot: int, n: int) -> str:
                cid = task.corpus[int(run.indices[r, slot])].id
                return f"{cid}|{_sha(qs[task.queries[r].id][n].text)}"

            qa = cap = None
            if o.s2_mode in ("both", "qa"):
                assert o.verifier is not None
                p = o.prompts["verify"]
                asks = {key(*t): Ask(key(*t), f"{p.text}\nQuestion: {qs[task.queries[t[0]].id][t[2]].text}",
                                     (task.corpus[int(run.indices[t[0], t[1]])],)) for t in pairs}
                got = ask_stage(list(asks.values()), o.verifier, p, o.decoding["verify"], store, ctx,
                                stage="verify_qa", reports=state.reports)
                qa = self._counts(task, run, width, pairs, qs, lambda t: got[key(*t)], "verify_qa")
            if o.s2_mode in ("both", "caption"):
                assert o.judge is not None
                p = o.prompts["judge"]
                asks = {}
                for t in pairs:
                    cid = task.corpus[int(run.indices[t[0], t[1]])].id
                    text = (f"{p.text}\nDescription: {state.gallery_captions[cid]}\n"
                            f"Question: {qs[task.queries[t[0]].id][t[2]].text}")
                    asks[key(*t)] = Ask(key(*t), text)
                got = ask_stage(list(asks.values()), o.judge, p, o.decoding["judge"], store, ctx,
                                stage="verify_caption", reports=state.reports)
                cap = self._counts(task, run, width, pairs, qs, lambda t: got[key(*t)], "verify_caption")
        counts = stage2_counts(qa, cap)

        def reorder(head: Run) -> Run:
            s1 = valid_scores(head)
            new = reorder_head(head, verification_scores(s1, counts[:, : head.indices.shape[1]]))
            if head.first_relevant_rank is not None:
                new.first_relevant_rank = first_ranks_after_rerank(new.indices, head.first_relevant_rank,
                                                                   task)
            return new

        out = rerank_head(run, width, reorder)
        finish_cost(task, ctx, o.encoding, state.reports)
        return out

    def _counts(self, task: Task, run: Run, width: int, pairs: Sequence[tuple[int, int, int]],
                qs: Mapping[str, list[Question]], reply: Any, stage: str) -> np.ndarray:
        counts = np.zeros((len(task.queries), width), dtype=np.float64)
        unparsed = 0
        for t in pairs:
            r, slot, n = t
            ans = parse_yes_no(reply(t))
            unparsed += ans is None
            counts[r, slot] += ans is not None and ans == qs[task.queries[r].id][n].expected
        self.owner.encoding.setdefault("parse", {})[f"{stage}_unparsable"] = unparsed
        return counts


# ------------------------------------------------------------------------------------------ stage 3


@dataclass
class XRPairwise:
    """XR's optional evaluator: the MLLM sees the reference and a candidate; accepted ones move first."""

    owner: XR
    depth: int | None = 100
    spec: ComponentSpec = field(default_factory=lambda: ComponentSpec(
        name="xr-pairwise", description="XR stage 3: candidates an MLLM accepts (reference + candidate "
        "images) move to the front, in their current order"))

    def fingerprint(self) -> dict[str, Any]:
        return {"reranker": "xr-pairwise", "depth": self.depth,
                "prompt": self.owner.prompts["pairwise"].record()}

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        return {"rerank": "xr-pairwise", "depth": self.depth,
                "rule": "accepted candidates first, each group in its current order",
                "candidate_subset": "stage 1's (not reranked)"}

    def rerank(self, task: Task, run: Run, ctx: Context, base: Retriever) -> Run:
        o = self.owner
        state = _xr_base(base, o, "xr-pairwise")
        assert o.evaluator is not None
        width = run.indices.shape[1] if self.depth is None else min(self.depth, run.indices.shape[1])
        p = o.prompts["pairwise"]
        asks: dict[tuple[int, int], Ask] = {}
        for r, q in enumerate(task.queries):
            ref = Item(q.reference_id or q.id, image=q.item.image)
            for slot in range(width):
                if run.indices[r, slot] >= 0:
                    cand = task.corpus[int(run.indices[r, slot])]
                    text = f"{p.text}\nRequest: {instruction(task, r)}"
                    asks[(r, slot)] = Ask(f"{q.id}|{cand.id}", text, (ref, cand))
        with open_store(ctx, o.artifacts_dir) as store:
            got = ask_stage(list(asks.values()), o.evaluator, p, o.decoding["pairwise"], store, ctx,
                            stage="pairwise", reports=state.reports)
        accepted = np.zeros((len(task.queries), width), dtype=bool)
        for (r, slot), a in asks.items():
            accepted[r, slot] = parse_yes_no(got[a.id]) is True

        def reorder(head: Run) -> Run:
            new = move_to_front(head, accepted[:, : head.indices.shape[1]])
            if head.first_relevant_rank is not None:
                new.first_relevant_rank = first_ranks_after_rerank(new.indices, head.first_relevant_rank,
                                                                   task)
            return new

        out = rerank_head(run, width, reorder)
        finish_cost(task, ctx, o.encoding, state.reports)
        return out


__all__ = [
    "MODES", "SOURCES", "SPEC", "STAGES", "VARIANTS", "XR", "Ask", "Imagined", "Question", "XRPairwise",
    "XRQuestions", "ask_stage", "hybrid_expression", "move_to_front", "parse_imagined", "parse_questions",
    "parse_yes_no", "reorder_head", "rrf_expression", "stage1_scores", "stage2_counts", "verification_scores",
]
