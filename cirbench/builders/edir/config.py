"""The EDIR pipeline's settings: defaults, merged under the YAML (pipelines/edir.yaml), checked for typos.

Every key a stage reads is listed here with its default, so an unknown key (a typo such as `min_scroe`) is an
error before any image is edited, not a silently ignored threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cirbench.builders.core.checks import check_config_lmms, check_config_model
from cirbench.builders.core.config import merge_defaults, stage_lmm, work_identity
from cirbench.builders.edir.instructions import INSTRUCTIONS_PROMPT
from cirbench.builders.edir.rewrite import REWRITE_PROMPT
from cirbench.builders.edir.verify import VERIFY_PROMPT
from cirbench.llm.templates import SUBCATEGORIES, check_subcategories

DEFAULTS: dict[str, Any] = {
    "pipeline": "edir",
    "name": "cirbench-edir",
    "version": "1.0",
    "license": "unknown",
    "description": "Fine-grained composed image retrieval benchmark built by instruction-guided image "
    "editing "
    "(the EDIR recipe).",
    "seed": 0,
    "sources": {"default": None, "image_column": None, "id_column": None, "min_size": 64},
    "dedup": {"method": "auto", "max_distance": 4},
    "distractors": {"count": 0},
    "instructions": {
        "subcategories": list(SUBCATEGORIES),
        "per_source": 5,
        "complex_components": 2,
        "max_tokens": 1024,
    },
    "lmm": {"backend": "template", "cache": True, "openai": {}, "local": {}},
    "lmm_overrides": {},
    "editor": {
        "model": None,
        "revision": None,
        "variant": None,
        "device": "auto",
        "dtype": "auto",
        "batch_size": 8,
        "size": 512,
        "multiple_of": 16,
        "call": {},
        "png_compress_level": 6,
    },
    "verify": {
        "lmm": {"enabled": True, "min_score": 0.7, "max_tokens": 256},
        "embedding": {
            "enabled": True,
            "model": "clip-l14",
            "options": {},
            "unrelated": 16,
            "min_margin": 0.0,
            "min_direction": 0.1,
            "max_source_similarity": 0.995,
            "batch_size": 32,
        },
    },
    "rewrite": {"enabled": True, "on_failure": "reject", "with_image": False, "max_tokens": 256},
    "negatives": {"siblings": True, "partial_edits": True, "max_per_query": 10},
    "export": {"split": "test", "contact_sheet_rows": 15, "images": "files"},
    "prompts": {"instructions": INSTRUCTIONS_PROMPT, "verify": VERIFY_PROMPT, "rewrite": REWRITE_PROMPT},
    "work": {"durable": False, "give_up_after": 5, "lookahead": 2},
}
FREE_FORM = {
    ("lmm", "openai"),
    ("lmm", "local"),
    ("editor", "call"),
    ("verify", "embedding", "options"),
    ("lmm_overrides",),
}
"""Sections passed through to a backend or a pipeline call, checked there instead."""
STAGES_WITH_LMM = ("instructions", "verify", "rewrite")


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged under `config`, validated; the result is what the build records."""
    if config.get("pipeline") != "edir":
        raise ValueError(f"not an EDIR pipeline config (pipeline: {config.get('pipeline')!r})")
    cfg: dict[str, Any] = merge_defaults(DEFAULTS, dict(config), FREE_FORM)
    cfg["lmm_overrides"] = dict(cfg["lmm_overrides"] or {})
    check_subcategories(cfg["instructions"]["subcategories"])
    if cfg["export"]["images"] not in ("files", "parquet"):
        raise ValueError(
            "export.images must be 'files' (images/ next to the tables) or 'parquet' (inline bytes)"
        )
    if cfg["rewrite"]["on_failure"] not in ("reject", "instruction"):
        raise ValueError("rewrite.on_failure must be 'reject' or 'instruction'")
    bad = set(cfg["lmm_overrides"]) - set(STAGES_WITH_LMM)
    if bad:
        raise ValueError(f"lmm_overrides: unknown stage(s) {sorted(bad)}; stages: {list(STAGES_WITH_LMM)}")
    emb = cfg["verify"]["embedding"]
    if emb["enabled"]:  # a config file names models, never code to import (cirbench.builders)
        check_config_model(emb["model"], emb["options"], "verify.embedding.model")
    check_config_lmms(cfg)
    return cfg


def stage_lmm_config(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    return stage_lmm(cfg, stage)


def identity(cfg: Mapping[str, Any], sources: str) -> dict[str, Any]:
    """What a unit's result depends on: not the limit, not the work-dir durability, not the contact sheet
    size (see work_identity)."""
    return work_identity("edir", cfg, sources)
