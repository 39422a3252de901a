"""Stage 2: edit instructions per EDIR category and subcategory, from an LMM that sees the image or templates.

Which subcategories a source gets is drawn per source with a seeded generator (`per_source` of the configured
list), so the taxonomy is covered evenly across the pool and a rerun draws the same. The LMM answers once per
source for all of them, in JSON that is validated field by field: a missing or malformed edit is rejected with
its reason and the others go on; an answer that is not JSON at all rejects the source's edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cirbench.builders.core.units import rejection, seed_for
from cirbench.builders.core.workdir import Deferred
from cirbench.llm.base import LMM, LMMRequest, ask_json, require_dict, require_str
from cirbench.llm.templates import DEFINITIONS, TAXONOMY, template_edit

INSTRUCTIONS_PROMPT = """\
You write image-editing instructions for a composed image retrieval benchmark.
Look at the image. For each edit type listed below, write ONE concrete instruction that an image-editing model
can apply to this particular image, and whose result a person could verify by looking. The instruction must
change only what it says; everything else in the image stays as it is. Refer to things that are visible in the
image. If an edit type cannot sensibly be applied to this image, give "instruction": null and a short
"reason".

Edit types (subcategory: what it changes):
{edit_types}

For "Complex", combine {complex_components} simple edits of different main categories and list them in
"components".

Answer with JSON only, in this form:
{{"source_caption": "<one sentence describing the image>",
 "edits": [{{"subcategory": "<edit type>", "instruction": "<imperative sentence>",
            "target_caption": "<one sentence describing the edited image>",
            "components": ["<simple instruction>", "..."]}}]}}"""


@dataclass
class PlannedEdit:
    """One edit of one source, with everything needed to run it again identically."""

    id: str
    subcategory: str
    instruction: str
    seed: int
    target_caption: str | None = None
    components: list[str] = field(default_factory=list)
    template_query: str | None = None
    partials: list[dict[str, Any]] = field(default_factory=list)
    """Partial edits of a Complex edit (one component each): hard negatives. Each: id, instruction, seed."""

    @property
    def category(self) -> str:
        return TAXONOMY[self.subcategory]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "subcategory": self.subcategory,
            "instruction": self.instruction,
            "seed": self.seed,
            "target_caption": self.target_caption,
            "components": list(self.components),
            "template_query": self.template_query,
            "partials": [dict(p) for p in self.partials],
        }


def plan_subcategories(source_id: str, subcategories: list[str], per_source: int, seed: int) -> list[str]:
    """The subcategories this source is edited with (taxonomy order), drawn per source."""
    if per_source >= len(subcategories):
        return list(subcategories)
    rng = np.random.default_rng(seed_for(seed, "plan", source_id))
    picked = set(rng.choice(len(subcategories), size=per_source, replace=False).tolist())
    return [s for k, s in enumerate(subcategories) if k in picked]


def edit_types_text(subs: list[str]) -> str:
    return "\n".join(f"- {s} ({TAXONOMY[s]}): {DEFINITIONS[s]}" for s in subs)


def validate_instructions(obj: Any, requested: list[str], components: int) -> dict[str, Any]:
    """{'source_caption': str|None, 'edits': {sub: {...} | {'error': reason}}} for every requested sub."""
    d = require_dict(obj)
    edits = d.get("edits")
    if not isinstance(edits, list):
        raise ValueError("field 'edits' must be a list")
    by_lower = {s.lower(): s for s in requested}
    out: dict[str, dict[str, Any]] = {}
    for k, e in enumerate(edits):
        if not isinstance(e, dict):
            continue
        sub = by_lower.get(str(e.get("subcategory", "")).strip().lower())
        if sub is None or sub in out:
            continue
        if e.get("instruction") is None:
            out[sub] = {"error": f"LMM declined: {str(e.get('reason') or 'no reason given')[:200]}"}
            continue
        try:
            instruction = require_str(e, "instruction", max_len=400)
            caption = require_str(e, "target_caption", max_len=400, optional=True)
            comps: list[str] = []
            if sub == "Complex":
                raw = e.get("components")
                if (
                    not isinstance(raw, list)
                    or len(raw) < 2
                    or not all(isinstance(c, str) and c.strip() for c in raw)
                ):
                    raise ValueError("Complex needs 'components': a list of at least 2 instructions")
                comps = [" ".join(c.split()) for c in raw[: max(2, components)]]
            out[sub] = {"instruction": instruction, "target_caption": caption, "components": comps}
        except ValueError as err:
            out[sub] = {"error": f"malformed edit #{k}: {err}"}
    if not out:
        raise ValueError(f"no edit for any requested type {requested}")
    for sub in requested:
        out.setdefault(sub, {"error": "LMM gave no instruction for this type"})
    caption = d.get("source_caption")
    return {
        "source_caption": " ".join(caption.split())[:400]
        if isinstance(caption, str) and caption.strip()
        else None,
        "edits": out,
    }


def _edit(
    source_id: str,
    k: int,
    sub: str,
    instruction: str,
    seed: int,
    *,
    caption: str | None,
    components: list[str],
    template_query: str | None,
    partial_edits: bool,
) -> PlannedEdit:
    eid = f"{source_id}_{k}"
    partials = (
        [
            {"id": f"{eid}p{j}", "instruction": c, "seed": seed_for(seed, "edit", f"{eid}p{j}")}
            for j, c in enumerate(components, 1)
        ]
        if partial_edits and sub == "Complex"
        else []
    )
    return PlannedEdit(
        eid, sub, instruction, seed_for(seed, "edit", eid), caption, components, template_query, partials
    )


def make_instructions(
    source_id: str,
    image_png: bytes,
    subs: list[str],
    lmm: LMM | None,
    cfg: dict[str, Any],
    prompt: str,
    seed: int,
) -> tuple[str | None, list[PlannedEdit], list[dict[str, Any]]]:
    """(source caption, planned edits in taxonomy order, rejections); Deferred on a transport failure."""
    comps, partial = int(cfg.get("complex_components", 2)), bool(cfg.get("partial_edits", True))
    index = {s: k for k, s in enumerate(subs, 1)}
    if lmm is None:
        rng = np.random.default_rng(seed_for(seed, "templates", source_id))
        edits = []
        for sub in subs:
            te = template_edit(sub, rng, components=comps)
            edits.append(
                _edit(
                    source_id,
                    index[sub],
                    sub,
                    te.instruction,
                    seed,
                    caption=te.target_caption,
                    components=list(te.components),
                    template_query=te.query,
                    partial_edits=partial,
                )
            )
        return "a photo", edits, []
    text = prompt.format(edit_types=edit_types_text(subs), complex_components=comps)
    req = LMMRequest(parts=(image_png, text), max_tokens=int(cfg.get("max_tokens", 1024)))
    answer = ask_json(lmm, [req], lambda o: validate_instructions(o, subs, comps))[0]
    if answer.transient:
        raise Deferred(f"instructions for {source_id}: {answer.error}")
    if not answer.ok:
        return (
            None,
            [],
            [
                rejection("instructions", str(answer.error), subcategory=s, raw=_clip(answer.raw))
                for s in subs
            ],
        )
    edits, rejected = [], []
    for sub in subs:
        e = answer.value["edits"][sub]
        if "error" in e:
            rejected.append(rejection("instructions", e["error"], subcategory=sub))
            continue
        edits.append(
            _edit(
                source_id,
                index[sub],
                sub,
                e["instruction"],
                seed,
                caption=e["target_caption"],
                components=e["components"],
                template_query=None,
                partial_edits=partial,
            )
        )
    return answer.value["source_caption"], edits, rejected


def _clip(raw: str | None, n: int = 300) -> str | None:
    return None if raw is None else raw[:n]
