"""Stages 1b and 2 of SoFT's pipeline, as LMM requests with validated answers (or offline stand-ins).

- describe: the reference image and the query texts -> a two-sentence description of the wanted image;
- score: the reference, the texts and the top-n candidates of one ranked list -> a confidence per candidate,
  relative within the list; candidates at or above the threshold form the multi-target set (max over lists);
- single: one target drawn from the set, the rest as comparison images -> one text naming only the target.

Without an LMM (`lmm.backend: template`) the stand-ins are: describe = the query text itself; score = the
similarity min-max normalised within each list (a relative score, as SoFT asks of its LMM); single = the query
text plus the target's gallery caption when it has one, else the query is rejected (nothing can name the
target's unique details). The stand-ins make the pipeline runnable offline; they are not SoFT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cirbench.builders.core.units import rejection
from cirbench.builders.core.workdir import Deferred
from cirbench.llm.base import LMM, LMMRequest, ask_json, require_dict, require_score, require_str


def captions_text(captions: Sequence[str]) -> str:
    return "\n".join(f'{k}. "{c}"' for k, c in enumerate(captions, 1))


def validate_description(obj: Any) -> tuple[str, str]:
    d = require_dict(obj)
    s1 = require_str(d, "sentence1", max_len=400)
    s2 = d.get("sentence2") or ""
    if not isinstance(s2, str):
        raise ValueError("field 'sentence2' must be a string")
    return str(s1), " ".join(s2.split())[:400]


def describe(
    lmm: LMM | None, ref_png: bytes | None, captions: Sequence[str], cfg: Mapping[str, Any], prompt: str
) -> tuple[dict[str, str] | None, list[dict[str, Any]]]:
    """({'caption': sentence 1, 'joined': both sentences}, rejections)."""
    if lmm is None:
        text = " ".join(captions)
        return {"caption": text, "joined": text}, []
    parts: tuple[str | bytes, ...] = ((ref_png,) if ref_png else ()) + (
        prompt.format(captions=captions_text(captions)),
    )
    a = ask_json(
        lmm, [LMMRequest(parts=parts, max_tokens=int(cfg.get("max_tokens", 256)))], validate_description
    )[0]
    if a.transient:
        raise Deferred(f"describe: {a.error}")
    if not a.ok:
        return None, [rejection("describe", str(a.error), raw=None if a.raw is None else a.raw[:300])]
    s1, s2 = a.value
    return {"caption": s1, "joined": f"{s1} {s2}".strip()}, []


def validate_scores(obj: Any, names: Sequence[str]) -> dict[str, float]:
    """Scores of the listed candidates: unknown names ignored; a bad value, or no known name, is an error."""
    d = require_dict(obj)
    raw = d.get("confidence_scores")
    if not isinstance(raw, dict):
        raise ValueError("field 'confidence_scores' must be an object {name: score}")
    wanted = set(names)
    out = {str(k): require_score(v, str(k)) for k, v in raw.items() if str(k) in wanted}
    if not out:
        raise ValueError(f"no score for any listed candidate (got keys {sorted(map(str, raw))[:5]})")
    return out


def minmax(cands: Sequence[tuple[str, float]]) -> dict[str, float]:
    scores = [s for _, s in cands]
    lo, hi = min(scores), max(scores)
    return {c: round((s - lo) / (hi - lo), 6) if hi > lo else 1.0 for c, s in cands}


def score_lists(
    lmm: LMM | None,
    ref_png: bytes | None,
    captions: Sequence[str],
    lists: Mapping[str, Sequence[tuple[str, float]]],
    images: Mapping[str, bytes],
    cfg: Mapping[str, Any],
    prompt: str,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """({list name: {candidate: confidence}}, rejections) for the top-n of every list."""
    n = int(cfg.get("top_n", 10))
    heads = {name: list(cands)[:n] for name, cands in lists.items() if cands}
    if lmm is None:
        return {name: minmax(c) for name, c in heads.items()}, []
    names = list(heads)
    reqs = []
    for name in names:
        parts: list[str | bytes] = ([ref_png] if ref_png else []) + [
            prompt.format(captions=captions_text(captions))
        ]
        for k, (cid, _) in enumerate(heads[name], 1):
            parts += [f"candidate {k}: {cid}", images[cid]]
        reqs.append(LMMRequest(parts=tuple(parts), max_tokens=int(cfg.get("max_tokens", 1024))))
    checks = [(lambda o, ids=[c for c, _ in heads[nm]]: validate_scores(o, ids)) for nm in names]
    out: dict[str, dict[str, float]] = {}
    rejected: list[dict[str, Any]] = []
    for name, a in zip(names, ask_json(lmm, reqs, checks), strict=True):
        if a.transient:
            raise Deferred(f"score {name}: {a.error}")
        if a.ok:
            out[name] = a.value
        else:
            rejected.append(
                rejection("score", str(a.error), list=name, raw=None if a.raw is None else a.raw[:300])
            )
    return out, rejected


def validate_refined(obj: Any) -> str:
    return str(require_str(require_dict(obj), "refined_caption", max_len=400))


def single_target(
    lmm: LMM | None,
    ref_png: bytes | None,
    target: str,
    comparisons: Sequence[str],
    captions: Sequence[str],
    images: Mapping[str, bytes],
    target_caption: str | None,
    cfg: Mapping[str, Any],
    prompt: str,
) -> tuple[str | None, list[dict[str, Any]]]:
    """(refined text, rejections) for one target against its comparison images."""
    if lmm is None:
        if target_caption:
            return f"{' '.join(captions)}; the result shows {target_caption}", []
        return None, [
            rejection(
                "single",
                "no LMM configured and the target has no caption: nothing names the target's unique details",
            )
        ]
    parts: list[str | bytes] = [
        *([ref_png] if ref_png else []),
        images[target],
        *(images[c] for c in comparisons),
    ]
    parts.append(prompt.format(n_comparison=len(comparisons), captions=captions_text(captions)))
    a = ask_json(
        lmm, [LMMRequest(parts=tuple(parts), max_tokens=int(cfg.get("max_tokens", 256)))], validate_refined
    )[0]
    if a.transient:
        raise Deferred(f"single-target rewrite: {a.error}")
    if not a.ok:
        return None, [rejection("single", str(a.error), raw=None if a.raw is None else a.raw[:300])]
    return a.value, []
