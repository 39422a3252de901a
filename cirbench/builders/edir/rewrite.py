"""Stage 5: each verified edit instruction rewritten into a natural CIR query; the raw instruction is kept.

An editor wants imperatives ("Change the car's colour to red"); a retrieval user writes relative descriptions
("same car but red, parked in the same street"). EDIR had an LLM do this rewrite; here the same LMM interface
does it (text only by default, as EDIR's Qwen3-32B), and the template backend uses each template's query form.
"""

from __future__ import annotations

from typing import Any

from cirbench.builders.core.units import rejection
from cirbench.builders.core.workdir import Deferred
from cirbench.builders.edir.instructions import PlannedEdit
from cirbench.llm.base import LMM, LMMRequest, ask_json, require_dict, require_str

REWRITE_PROMPT = """\
Rewrite an image-editing instruction as the query a person would type to find the edited image, when they show
the original image and describe what should be different. Write it as a relative description of the wanted
image, in one natural sentence (for example "the same room but at night with the lamps switched on"). Keep
every detail the instruction requires and add no new ones. Do not mention editing, instructions or images.

Instruction: "{instruction}"

Answer with JSON only: {{"query": "<the query>"}}"""


def validate_query(obj: Any, instruction: str) -> str:
    q = require_str(require_dict(obj), "query", max_len=300)
    assert q is not None
    if q.strip().lower() == instruction.strip().lower():
        raise ValueError("the query repeats the instruction verbatim")
    return q


def rewrite_queries(
    edits: list[PlannedEdit], lmm: LMM | None, cfg: dict[str, Any], prompt: str, source_png: bytes | None
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """({edit id: query}, rejections); on_failure 'reject' drops the edit, 'instruction' keeps the raw."""
    if not edits:
        return {}, []
    if lmm is None:
        return {e.id: e.template_query or e.instruction for e in edits}, []
    with_image = bool(cfg.get("with_image", False)) and source_png is not None
    reqs = [
        LMMRequest(
            parts=((source_png,) if with_image and source_png else ())
            + (prompt.format(instruction=e.instruction),),
            max_tokens=int(cfg.get("max_tokens", 256)),
        )
        for e in edits
    ]
    checks = [(lambda o, ins=e.instruction: validate_query(o, ins)) for e in edits]
    answers = ask_json(lmm, reqs, checks)
    queries: dict[str, str] = {}
    rejected: list[dict[str, Any]] = []
    for e, a in zip(edits, answers, strict=True):
        if a.transient:
            raise Deferred(f"rewrite of {e.id}: {a.error}")
        if a.ok:
            queries[e.id] = a.value
        elif cfg.get("on_failure", "reject") == "instruction":
            queries[e.id] = e.instruction
        else:
            rejected.append(
                rejection(
                    "rewrite",
                    str(a.error),
                    edit=e.id,
                    subcategory=e.subcategory,
                    raw=None if a.raw is None else a.raw[:300],
                )
            )
    return queries, rejected
