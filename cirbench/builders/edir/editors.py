"""Stage 3: instruction-guided editing with a diffusers pipeline, by hub id or local directory.

The pipeline classes live in `cirbench.models.diffusion` (shared with the generative retrieval methods):
one loader for every editing family diffusers ships, per-family call defaults, and one seed per edit (a CPU
generator, so the noise is the same on any device); a call edits one source with a batch of instructions, and
the batches of a unit are fixed by the unit alone, so a resumed or sharded run reproduces the same pixels.
"""

from __future__ import annotations

from typing import Any

from cirbench.models.diffusion import FAMILY_DEFAULTS, UNBATCHED, DiffusersEditor, Editor, family_of


def make_editor(cfg: dict[str, Any]) -> DiffusersEditor:
    model = cfg.get("model")
    if not model:
        raise ValueError(
            "editor.model is required: a diffusers editing pipeline, by hub id "
            "(e.g. Qwen/Qwen-Image-Edit) or local directory"
        )
    return DiffusersEditor(
        str(model),
        revision=cfg.get("revision"),
        device=cfg.get("device", "auto"),
        dtype=cfg.get("dtype", "auto"),
        batch_size=int(cfg.get("batch_size", 8)),
        call=cfg.get("call"),
        variant=cfg.get("variant"),
    )


__all__ = ["FAMILY_DEFAULTS", "UNBATCHED", "DiffusersEditor", "Editor", "family_of", "make_editor"]
