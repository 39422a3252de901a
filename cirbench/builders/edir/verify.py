"""Stage 4: verification: an embedding check and an LMM check; every rejection is logged with its reason.

Embedding check (cheap, runs first), with an Encoder from the model registry (`verify.embedding.model`):
- `sim_source`: cosine(edited, source). Above `max_source_similarity` the edit visibly did nothing.
- `margin`: sim_source minus the best cosine(edited, u) over a fixed set of unrelated pool images. Below
  `min_margin` the result drifted away from its source (the editor re-generated the scene).
- `direction`: cosine between the image change (edited - source) and the text change (target caption - source
  caption, or the instruction when there are no captions): InstructPix2Pix's CLIP directional similarity.
  Below `min_direction` the change does not follow the text.
A threshold set to null switches that test off. LMM check: the model sees source and edited image and the
instruction and answers whether the edit happened, whether anything else changed, and a score in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cirbench.builders.core.units import rejection
from cirbench.builders.core.workdir import Deferred
from cirbench.builders.edir.instructions import PlannedEdit
from cirbench.core.types import Item
from cirbench.llm.base import LMM, LMMRequest, ask_json, require_bool, require_dict, require_score
from cirbench.models.base import Batch, Encoder, l2_normalise

VERIFY_PROMPT = """\
The first image is an original; the second is meant to be the same image after this edit:
"{instruction}"
Judge the second image. Was the edit carried out? Did anything change that the edit did not ask for (other
objects, the background, the framing, the style)? Ignore small differences in image quality.

Answer with JSON only:
{{"edit_applied": true or false, "only_requested_change": true or false,
 "score": <a number from 0 to 1: how well the second image is the first with exactly this edit>,
 "reason": "<one short sentence>"}}"""


def validate_verdict(obj: Any) -> dict[str, Any]:
    d = require_dict(obj)
    reason = d.get("reason")
    return {
        "edit_applied": require_bool(d, "edit_applied"),
        "only_requested_change": require_bool(d, "only_requested_change"),
        "score": require_score(d.get("score"), "score"),
        "reason": " ".join(reason.split())[:300] if isinstance(reason, str) else None,
    }


def lmm_verify(
    edits: Sequence[PlannedEdit],
    edited_png: dict[str, bytes],
    source_png: bytes,
    lmm: LMM,
    cfg: dict[str, Any],
    prompt: str,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """({edit id: verdict} for every edit asked about, rejections). Raises Deferred on a transport failure."""
    min_score = float(cfg.get("min_score", 0.7))
    reqs = [
        LMMRequest(
            parts=(source_png, edited_png[e.id], prompt.format(instruction=e.instruction)),
            max_tokens=int(cfg.get("max_tokens", 256)),
        )
        for e in edits
    ]
    verdicts: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, Any]] = []
    for e, a in zip(edits, ask_json(lmm, reqs, validate_verdict), strict=True):
        if a.transient:
            raise Deferred(f"verification of {e.id}: {a.error}")
        if not a.ok:
            rejected.append(
                rejection(
                    "verify_lmm",
                    str(a.error),
                    edit=e.id,
                    subcategory=e.subcategory,
                    raw=None if a.raw is None else a.raw[:300],
                )
            )
            continue
        v = a.value
        verdicts[e.id] = v
        why = []
        if not v["edit_applied"]:
            why.append("the edit was not applied")
        if not v["only_requested_change"]:
            why.append("other things changed")
        if v["score"] < min_score:
            why.append(f"score {v['score']:.2f} < {min_score:.2f}")
        if why:
            rejected.append(
                rejection(
                    "verify_lmm", "; ".join(why), edit=e.id, subcategory=e.subcategory, lmm_reason=v["reason"]
                )
            )
    return verdicts, rejected


class EmbeddingVerifier:
    """Embedding checks of edited images against their source, unrelated images and the edit text."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        min_margin: float | None = 0.0,
        min_direction: float | None = 0.1,
        max_source_similarity: float | None = 0.995,
        batch_size: int = 32,
    ) -> None:
        self.encoder = encoder
        self.min_margin, self.min_direction = min_margin, min_direction
        self.max_source_similarity = max_source_similarity
        self.batch_size = max(1, int(batch_size))
        self.unrelated_ids: list[str] = []
        self.unrelated: np.ndarray | None = None

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.fingerprint(),
            "min_margin": self.min_margin,
            "min_direction": self.min_direction,
            "max_source_similarity": self.max_source_similarity,
        }

    def images(self, pngs: Sequence[bytes], decoded: Sequence[Image.Image], ids: Sequence[str]) -> np.ndarray:
        rows = []
        for a in range(0, len(pngs), self.batch_size):
            items = [
                Item(id=i, image=p)
                for i, p in zip(ids[a : a + self.batch_size], pngs[a : a + self.batch_size], strict=True)
            ]
            rows.append(
                self.encoder.encode(Batch(items, list(decoded[a : a + self.batch_size])), role="document")
            )
        return l2_normalise(np.concatenate(rows)) if rows else np.zeros((0, 1), np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        items = [Item(id=f"t{k}", text=t) for k, t in enumerate(texts)]
        return l2_normalise(self.encoder.encode(Batch(items, [None] * len(items)), role="query"))

    def set_unrelated(
        self, ids: Sequence[str], pngs: Sequence[bytes], decoded: Sequence[Image.Image]
    ) -> None:
        self.unrelated_ids = list(ids)
        self.unrelated = self.images(pngs, decoded, ids) if ids else None

    def check(
        self,
        source_id: str,
        source_png: bytes,
        source_img: Image.Image,
        edits: Sequence[PlannedEdit],
        edited_png: dict[str, bytes],
        edited_img: dict[str, Image.Image],
        source_caption: str | None,
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """({edit id: measured values}, rejections) for the given edits."""
        if not edits:
            return {}, []
        ids = [e.id for e in edits]
        src = self.images([source_png], [source_img], [source_id])[0]
        ed = self.images([edited_png[i] for i in ids], [edited_img[i] for i in ids], ids)
        use_caps = source_caption is not None and all(e.target_caption for e in edits)
        if use_caps:
            tv = self.texts([source_caption or ""] + [e.target_caption or "" for e in edits])
            dtext = tv[1:] - tv[0]
        else:
            dtext = self.texts([e.instruction for e in edits])
        keep = [k for k, u in enumerate(self.unrelated_ids) if u != source_id]
        unrel = self.unrelated[keep] if self.unrelated is not None and keep else None
        checks: dict[str, dict[str, Any]] = {}
        rejected: list[dict[str, Any]] = []
        for k, e in enumerate(edits):
            sim = float(ed[k] @ src)
            dimg = ed[k] - src
            denom = float(np.linalg.norm(dimg) * np.linalg.norm(dtext[k]))
            direction = float(dimg @ dtext[k]) / denom if denom > 1e-8 else 0.0
            c: dict[str, Any] = {
                "sim_source": round(sim, 5),
                "direction": round(direction, 5),
                "direction_text": "captions" if use_caps else "instruction",
            }
            why = []
            if self.max_source_similarity is not None and sim > self.max_source_similarity:
                why.append(
                    f"no visible change (similarity to source {sim:.3f} > {self.max_source_similarity})"
                )
            if unrel is not None:
                sims = unrel @ ed[k]
                j = int(np.argmax(sims))
                margin = sim - float(sims[j])
                c.update(margin=round(margin, 5), nearest_unrelated=self.unrelated_ids[keep[j]])
                if self.min_margin is not None and margin < self.min_margin:
                    why.append(
                        f"closer to an unrelated image than to its source (margin {margin:.3f} < "
                        f"{self.min_margin}, nearest {self.unrelated_ids[keep[j]]})"
                    )
            if self.min_direction is not None and direction < self.min_direction:
                why.append(
                    f"change not aligned with the text (direction {direction:.3f} < {self.min_direction})"
                )
            checks[e.id] = c
            if why:
                rejected.append(
                    rejection(
                        "verify_embedding",
                        "; ".join(why),
                        edit=e.id,
                        subcategory=e.subcategory,
                        **{k2: v for k2, v in c.items() if k2 != "direction_text"},
                    )
                )
        return checks, rejected


def make_verifier(cfg: dict[str, Any]) -> EmbeddingVerifier | None:
    if not cfg.get("enabled", True):
        return None
    from cirbench.models import get_model

    encoder = get_model(str(cfg.get("model", "clip-l14")), **dict(cfg.get("options") or {}))

    def opt(key: str, default: float) -> float | None:
        v = cfg.get(key, default)
        return None if v is None else float(v)

    return EmbeddingVerifier(
        encoder,
        min_margin=opt("min_margin", 0.0),
        min_direction=opt("min_direction", 0.1),
        max_source_similarity=opt("max_source_similarity", 0.995),
        batch_size=int(cfg.get("batch_size", 32)),
    )


__all__ = ["VERIFY_PROMPT", "EmbeddingVerifier", "lmm_verify", "make_verifier", "validate_verdict"]
