"""The SoFT refinement pipeline's settings and prompts (pipelines/soft-refine-*.yaml override them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cirbench.builders.core.checks import check_config_lmms, check_config_model
from cirbench.builders.core.config import merge_defaults, stage_lmm, work_identity

DESCRIBE_PROMPT = """\
The image is a reference image, and these texts say how a user wants it changed:
{captions}
Write a two-sentence description of the image the user wants. Sentence 1 describes the wanted image by what
the texts ask for. Sentence 2 names things in the reference image that the texts do not contradict and that
can stay; it is an empty string when nothing else stays. Use concrete, visible attributes (colours, shapes,
materials, objects, places), never relative words such as "more", "similar" or "retain".

Answer with JSON only: {{"sentence1": "...", "sentence2": "..."}}"""

SCORE_PROMPT = """\
The first image is a reference image. The user wants an image that differs from it as these texts say:
{captions}
The next images are candidates, each after a line "candidate <number>: <name>". For each candidate, judge how
well it is the image the user wants (the reference with the requested change) and give a confidence between
0.0 and 1.0. Compare the candidates with each other: the scores are relative within this set.

Answer with JSON only: {{"confidence_scores": {{"<name>": <score>, ...}}}}, with every name listed above."""

SINGLE_PROMPT = """\
The images are, in order: a reference image; a target image; then {n_comparison} comparison images that also
fit the texts below but are not the target. The texts describe how to turn the reference into the target:
{captions}
They are not specific enough to tell the target from the comparison images. Write one refined text that keeps
their meaning, tone and style, and adds concrete details that are visible in the target and absent from every
comparison image (colour, texture, shape, position, kind of object), so that only the target fits it.

Answer with JSON only: {{"refined_caption": "<one sentence>"}}"""

DEFAULTS: dict[str, Any] = {
    "pipeline": "soft-refine",
    "name": "cirbench-soft-refined",
    "version": "1.0",
    "license": "see the source benchmark",
    "description": "Multi-target and single-target variants of a CIR benchmark, refined with SoFT's recipe.",
    "seed": 42,
    "sources": {"default": None, "split": None, "data_dir": None, "options": {}},
    "lmm": {"backend": "template", "cache": True, "openai": {}, "local": {}},
    "lmm_overrides": {},
    "mining": {
        "model": "clip-l14",
        "options": {},
        "top_k": 20,
        "query_types": ["caption", "joined", "target_image"],
        "exclude_reference": True,
        "batch_size": 32,
    },
    "scoring": {"top_n": 10, "threshold": 0.85, "max_tokens": 1024},
    "single": {"enabled": True, "max_comparisons": 4, "keep_unambiguous": True, "max_tokens": 256},
    "describe": {"max_tokens": 256},
    "export": {"ap_normaliser": "hits", "images": "files"},
    "prompts": {"describe": DESCRIBE_PROMPT, "score": SCORE_PROMPT, "single": SINGLE_PROMPT},
    "work": {"durable": False, "give_up_after": 5},
}
QUERY_TYPES = ("caption", "joined", "target_image")
STAGES_WITH_LMM = ("describe", "score", "single")
FREE_FORM = {
    ("lmm", "openai"),
    ("lmm", "local"),
    ("mining", "options"),
    ("sources", "options"),
    ("lmm_overrides",),
}


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("pipeline") != "soft-refine":
        raise ValueError(f"not a soft-refine pipeline config (pipeline: {config.get('pipeline')!r})")
    cfg: dict[str, Any] = merge_defaults(DEFAULTS, dict(config), FREE_FORM)
    cfg["lmm_overrides"] = dict(cfg["lmm_overrides"] or {})
    bad = [t for t in cfg["mining"]["query_types"] if t not in QUERY_TYPES]
    if bad or not cfg["mining"]["query_types"]:
        raise ValueError(f"mining.query_types: unknown {bad}; choose from {list(QUERY_TYPES)}")
    thr = float(cfg["scoring"]["threshold"])
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"scoring.threshold must be in [0, 1], got {thr}")
    if cfg["export"]["images"] not in ("files", "parquet"):
        raise ValueError(
            "export.images must be 'files' (images/ next to the tables) or 'parquet' (inline bytes)"
        )
    bad = sorted(set(cfg["lmm_overrides"]) - set(STAGES_WITH_LMM))
    if bad:
        raise ValueError(f"lmm_overrides: unknown stage(s) {bad}; stages: {list(STAGES_WITH_LMM)}")
    # a config file names models, never code to import (cirbench.builders)
    check_config_model(cfg["mining"]["model"], cfg["mining"]["options"], "mining.model")
    check_config_lmms(cfg)
    return cfg


def stage_lmm_config(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    return stage_lmm(cfg, stage)


def identity(cfg: Mapping[str, Any], sources: str) -> dict[str, Any]:
    """What a unit's result depends on (see cirbench.builders.core.config.work_identity)."""
    return work_identity("soft-refine", cfg, sources)
