"""LDRE (Yang et al., SIGIR 2024): n sampled captions of the reference -> one LLM rewrite per caption ->
an ensemble of the rewrites' text features, retrieved against gallery images.

Ensembles (`ensemble`):
- `mean`: the re-normalised mean of the n unit text features (LDRE's CIRR path). The released code averages
  CLIP's *unnormalised* text features; cirbench encoders return unit vectors, so the mean is of unit
  vectors (recorded).
- `adaptive`: LDRE's relevance-weighted ensemble. For caption slot i, over *all* queries,
  delta_i = sum_q sum_{top-k x} max(0, <b_qi, x> - <g_qi, x>), b the raw caption's feature, g the rewrite's,
  x the gallery image features (top-k largest per query, k = `ensemble_topk`, 5 in the newest release);
  w = softmax(delta / max(delta) / T), T = `ensemble_temperature` (0.04); query = sum_i w_i g_qi (not
  re-normalised, as released). One weight per slot shared by all queries: transductive over the query set.
- `released` (default): what the released code runs: adaptive on CIRCO, mean elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Task
from cirbench.llm.base import LMM
from cirbench.retrieval.base import ComponentSpec, Context
from cirbench.retrieval.dense import search_task
from cirbench.retrieval.methods import fusion
from cirbench.retrieval.methods.artifacts import ImportedArtifacts
from cirbench.retrieval.methods.common import (
    StageReport,
    TextQueryMethod,
    caption_stage,
    lmm_record,
    open_store,
    rewrite_stage,
)
from cirbench.retrieval.methods.components import Captioner, Decoding
from cirbench.retrieval.methods.prompts import BUILTIN, Prompt

ENSEMBLES = ("released", "mean", "adaptive")

SPEC = ComponentSpec(
    name="ldre",
    description="LDRE: n sampled reference captions -> n LLM rewrites -> ensemble of their text features",
    options={
        "components.encoder / captioner / rewriter": "as cirevl's",
        "decoding.caption": "mapping, {n: 15, top_p: 0.9, max_tokens: 30}: 15 nucleus-sampled captions",
        "decoding.rewrite": "mapping, {max_tokens: 256, temperature: 1.0}: the API default the release used",
        "options.ensemble": "released|mean|adaptive, released: adaptive on CIRCO, mean elsewhere",
        "options.ensemble_topk": "int, 5: gallery items per query in the adaptive weights",
        "options.ensemble_temperature": "float, 0.04: softmax temperature of the adaptive weights",
        "imports.captions / imports.rewrites": "released lists of n texts per query id (LDRE's CIRCO file: "
        "id_field: id, value_field: multi_caption_opt / "
        "multi_gpt-3.5_opt)",
    },
)


def adaptive_weights(
    edited: np.ndarray, raw: np.ndarray, gallery: np.ndarray, topk: int, temperature: float
) -> np.ndarray:
    """LDRE's per-slot weights (see the module docstring): edited, raw (queries, n, d); gallery (m, d)."""
    n = edited.shape[1]
    delta = np.zeros(n, dtype=np.float64)
    k = max(1, min(int(topk), gallery.shape[0]))
    g = np.asarray(gallery, dtype=np.float64)
    for i in range(n):
        drop = np.maximum(0.0, raw[:, i].astype(np.float64) @ g.T - edited[:, i].astype(np.float64) @ g.T)
        delta[i] = np.sort(drop, axis=1)[:, -k:].sum()
    top = delta.max()
    if top <= 0:
        return np.full(n, 1.0 / n)
    z = delta / top / float(temperature)
    z -= z.max()
    w = np.exp(z)
    return np.asarray(w / w.sum())


@dataclass
class LDRE(TextQueryMethod):
    captioner: Captioner | None = None
    rewriter: LMM | None = None
    caption_prompt: Prompt = field(default_factory=lambda: BUILTIN["caption-none"])
    rewrite_prompt: Prompt = field(default_factory=lambda: BUILTIN["ldre-divergent"])
    caption_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=30, top_p=0.9, n=15))
    rewrite_decoding: Decoding = field(default_factory=lambda: Decoding(max_tokens=256, temperature=1.0))
    ensemble: str = "released"
    ensemble_topk: int = 5
    ensemble_temperature: float = 0.04
    imported_captions: ImportedArtifacts | None = None
    imported_rewrites: ImportedArtifacts | None = None
    name: str = "ldre"
    spec: ComponentSpec = field(default_factory=lambda: SPEC)
    weights: list[float] | None = None
    """The adaptive ensemble's slot weights of the last retrieve (also in the result's encode record)."""

    def __post_init__(self) -> None:
        from cirbench.core.options import did_you_mean

        if self.ensemble not in ENSEMBLES:
            raise ValueError(
                f"options.ensemble: {self.ensemble!r} is not one of {', '.join(ENSEMBLES)}"
                f"{did_you_mean(self.ensemble, ENSEMBLES)}"
            )
        if self.ensemble_topk < 1 or self.ensemble_temperature <= 0:
            raise ValueError("options.ensemble_topk must be >= 1 and options.ensemble_temperature > 0")
        if self.captioner is None and self.imported_captions is None and self.imported_rewrites is None:
            raise ValueError("ldre needs a captioner (components.captioner) or imported captions")
        if self.rewriter is None and self.imported_rewrites is None:
            raise ValueError("ldre needs a rewriter LMM (components.rewriter) or imported rewrites")
        if self.rewrite_decoding.n != 1:
            raise ValueError(
                "decoding.rewrite.n: ldre makes one rewrite per caption (n: 1); the number of "
                "rewrites is decoding.caption.n"
            )
        self.spec = ComponentSpec(name=self.name, description=SPEC.description, options=SPEC.options)

    @property
    def n(self) -> int:
        return self.caption_decoding.n

    def mode(self, task: Task) -> str:
        if self.ensemble == "released":
            return "adaptive" if task.name.split(":")[0].startswith("circo") else "mean"
        return self.ensemble

    def fingerprint(self) -> dict[str, Any]:
        return {
            "method": "ldre",
            "encoder": self.clip.fingerprint(),
            "captioner": self.captioner.fingerprint() if self.captioner else None,
            "rewriter": lmm_record(self.rewriter) if self.rewriter else None,
            "prompts": {"caption": self.caption_prompt.record(), "rewrite": self.rewrite_prompt.record()},
            "decoding": {
                "caption": self.caption_decoding.record(),
                "rewrite": self.rewrite_decoding.record(),
            },
            "ensemble": {
                "option": self.ensemble,
                "topk": self.ensemble_topk,
                "temperature": self.ensemble_temperature,
            },
            "imports": {
                "captions": self.imported_captions.record() if self.imported_captions else None,
                "rewrites": self.imported_rewrites.record() if self.imported_rewrites else None,
            },
        }

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        mode = self.mode(task)
        rule = (
            f"adaptive: one softmax weight per caption slot from the top-{self.ensemble_topk} drops over "
            f"all queries (T={self.ensemble_temperature}; transductive over the query set)"
            if mode == "adaptive"
            else "mean of the unit text features, re-normalised"
        )
        return {
            "method": {
                "name": self.name,
                "kind": "ldre",
                "captions_per_query": self.n,
                "ensemble": mode,
                "ensemble_rule": rule,
                "query": "ensemble of the text features of the edited captions (no image)",
                "instruction": "the task's query text per its protocol (alternative phrasings unused)",
                "search": {"top_k": ctx.top_k, "dtype": ctx.search_dtype, "backend": ctx.search_backend},
                **self.base_record(ctx),
            }
        }

    def texts(self, task: Task, ctx: Context) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(raw captions, edited captions) per query id: n each."""
        reports: dict[str, StageReport] = self.encoding.setdefault("_reports", {})
        with open_store(ctx, self.artifacts_dir) as store:
            if self.captioner is None and self.imported_captions is None:  # rewrites imported, mean ensemble
                if self.mode(task) == "adaptive":
                    raise ValueError(
                        "the adaptive ensemble needs the raw captions too: give a captioner or "
                        "imports.captions"
                    )
                caps: dict[str, list[str]] = {}
            else:
                caps = caption_stage(
                    task,
                    self.captioner,
                    self.caption_prompt,
                    self.caption_decoding,
                    store,
                    ctx,
                    stage="ref_captions",
                    imported=self.imported_captions,
                    reports=reports,
                )
            if self.imported_rewrites is not None:
                imp = self.imported_rewrites
                edited = {q.id: [str(t) for t in imp.get(q.id)] for q in task.queries}
                bad = next((q for q in edited if len(edited[q]) != self.n), None)
                if bad is not None:
                    from cirbench.core.types import DatasetError

                    raise DatasetError(
                        f"expected {self.n} rewrites, found {len(edited[bad])}", file=imp.path, record=bad
                    )
                reports["edited_captions"] = StageReport(
                    "edited_captions", "", len(task.queries), 0, imp.record()
                )
                return caps, edited
            assert self.rewriter is not None
            rows = [
                (f"{q.id}#{j}", caps[q.id][j], q.item.text or "") for q in task.queries for j in range(self.n)
            ]
            got = rewrite_stage(
                rows,
                self.rewriter,
                self.rewrite_prompt,
                self.rewrite_decoding,
                store,
                ctx,
                stage="edited_captions",
                reports=reports,
            )
        return caps, {q.id: [got[f"{q.id}#{j}"] for j in range(self.n)] for q in task.queries}

    def retrieve(self, task: Task, ctx: Context) -> Run:
        self.encoding = {}
        caps, edited = self.texts(task, ctx)
        reports = self.encoding.pop("_reports")
        nq, n = len(task.queries), self.n
        flat = [t for q in task.queries for t in edited[q.id]]
        g = self.text_vectors(flat, ctx, "encoding edited captions").reshape(nq, n, -1)
        cv = self.gallery_vectors(task, ctx)
        if self.mode(task) == "adaptive":
            b = self.text_vectors(
                [t for q in task.queries for t in caps[q.id]], ctx, "encoding raw captions"
            ).reshape(nq, n, -1)
            w = adaptive_weights(g, b, cv, self.ensemble_topk, self.ensemble_temperature)
            self.weights = [float(x) for x in w]
            expr: Any = fusion.VecSum(
                tuple((float(w[i]), fusion.Vec(f"slot{i}")) for i in range(n)),
                normalize_each=False,
                normalize_sum=False,
            )
            feats = {f"slot{i}": g[:, i] for i in range(n)}
        else:
            self.weights = None
            expr = fusion.MeanOver("edited", normalize_each=True, normalize_result=True)
            feats = {"edited": g}
        qv = np.asarray(expr.vectors(feats), dtype=np.float32)
        self.encoding["ensemble"] = {"fusion": expr.record(), "weights": self.weights}
        with ctx.cost.timed("search"):
            run = search_task(task, qv, cv, ctx.top_k, ctx)
        self.finish_cost(task, ctx, reports)
        return run


__all__ = ["ENSEMBLES", "LDRE", "SPEC", "adaptive_weights"]
