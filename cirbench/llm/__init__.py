"""LMM backends for the build stages: an OpenAI-compatible HTTP client, a local transformers VLM, templates.

    lmm = make_lmm({"backend": "openai", "openai": {"model": "Qwen/Qwen2.5-VL-32B-Instruct",
                                                    "base_url": "http://127.0.0.1:8000/v1"}})

`make_lmm` returns None for the template backend: stages then use cirbench.llm.templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirbench.llm.base import LMM, JsonAnswer, LMMError, LMMRequest, ask_json, extract_json

BACKENDS = ("template", "openai", "local")


def make_lmm(cfg: Mapping[str, Any] | None, *, cache_dir: Path | None = None) -> LMM | None:
    """The backend a config section names; `cache: false` in it turns the disk cache off."""
    cfg = dict(cfg or {})
    backend = cfg.get("backend", "template")
    if backend not in BACKENDS:
        raise ValueError(f"lmm.backend: unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    cache = cache_dir if cfg.get("cache", True) else None
    if backend == "openai":
        from cirbench.llm.openai_client import from_config

        return from_config(dict(cfg.get("openai") or {}), cache)
    if backend == "local":
        from cirbench.llm.local import from_config as local_from_config

        return local_from_config(dict(cfg.get("local") or {}), cache)
    return None


def make_stage_lmms(sections: Mapping[str, Mapping[str, Any]], *, cache_dir: Path | None = None
                    ) -> dict[str, LMM | None]:
    """stage -> backend, one `make_lmm` per distinct config section: stages with the same backend share one
    client, and so one concurrency limit."""
    shared: dict[str, LMM | None] = {}
    lmms: dict[str, LMM | None] = {}
    for stage, section in sections.items():
        key = json.dumps(section, sort_keys=True)
        if key not in shared:
            shared[key] = make_lmm(section, cache_dir=cache_dir)
        lmms[stage] = shared[key]
    return lmms


def share_concurrency(section: Mapping[str, Any], workers: int) -> dict[str, Any]:
    """`section` for one of `workers` processes that share its concurrency limit (`--engine ray`): each
    client gets ceil(limit / workers) requests in flight, so the server sees no more than the limit (give or
    take the rounding). The limit is not in a fingerprint or a cache key, so answers do not change."""
    out = json.loads(json.dumps(dict(section)))
    if out.get("backend") == "openai" and workers > 1:
        from cirbench.llm.openai_client import DEFAULT_CONCURRENCY

        opts = dict(out.get("openai") or {})
        limit = int(opts.get("concurrency", DEFAULT_CONCURRENCY))
        opts["concurrency"] = max(1, -(-limit // workers))
        out["openai"] = opts
    return out


def lmm_fingerprint(lmm: LMM | None) -> dict[str, Any]:
    if lmm is None:
        return {"backend": "template"}
    return lmm.fingerprint()


__all__ = [
    "BACKENDS",
    "LMM",
    "JsonAnswer",
    "LMMError",
    "LMMRequest",
    "ask_json",
    "extract_json",
    "lmm_fingerprint",
    "make_lmm",
    "make_stage_lmms",
    "share_concurrency",
]
