"""Config pieces every pipeline resolves the same way: defaults merged under the user's keys (typos
refused with a suggestion), the LMM section per stage, and what a build's work units depend on."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge_defaults(base: Any, over: Any, free_form: set[tuple[str, ...]], path: tuple[str, ...] = ()) -> Any:
    """`over` merged over `base` recursively; an unknown key is an error, except in `free_form` sections."""
    if not isinstance(base, dict) or path in free_form:
        return copy.deepcopy(over)  # a leaf the user set, null included (null switches a threshold off)
    if over is None:  # an empty section (`verify:` with nothing under it)
        return copy.deepcopy(base)
    if not isinstance(over, Mapping):
        raise ValueError(f"config: {'.'.join(path)} must be a mapping, got {type(over).__name__}")
    unknown = set(over) - set(base)
    if unknown:
        where = ".".join(path) or "top level"
        from cirbench.core.options import did_you_mean

        hints = "".join(did_you_mean(u, base) for u in sorted(unknown))
        raise ValueError(f"config: unknown key(s) {sorted(unknown)} in {where}{hints}; known: {sorted(base)}")
    return {
        k: merge_defaults(base[k], over[k], free_form, (*path, k)) if k in over else copy.deepcopy(base[k])
        for k in base
    }


def stage_lmm(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The LMM section a stage uses: `lmm`, with `lmm_overrides.<stage>` merged over it."""
    base = copy.deepcopy(dict(cfg["lmm"]))
    for k, v in dict(cfg.get("lmm_overrides", {}).get(stage) or {}).items():
        base[k] = (
            {**base.get(k, {}), **v} if isinstance(v, Mapping) and isinstance(base.get(k), Mapping) else v
        )
    return base


def work_identity(pipeline: str, cfg: Mapping[str, Any], sources: str) -> dict[str, Any]:
    """What a build's units depend on (so the work dir can refuse to mix builds), for any pipeline: the
    config less what only shapes the export or the card (work-dir durability, export settings, name,
    version, licence, description), and the sources. The limit is never in it."""
    keep = {
        k: v
        for k, v in cfg.items()
        if k not in ("work", "export", "name", "version", "license", "description")
    }
    return {"pipeline": pipeline, "config": keep, "sources": sources}


__all__ = ["merge_defaults", "stage_lmm", "work_identity"]
