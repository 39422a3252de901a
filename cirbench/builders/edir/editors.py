"""Stage 3: instruction-guided editing with a diffusers pipeline, by hub id or local directory.

One loader for every editing family diffusers ships (InstructPix2Pix, SDXL-InstructPix2Pix, FLUX.1 Kontext,
Qwen-Image-Edit, ...): `DiffusionPipeline.from_pretrained(model)` picks the class from model_index.json, and a
small table adds the call arguments each family needs (output size for Kontext and Qwen). Only arguments the
pipeline's `__call__` accepts are passed. Every edit has its own seed (a CPU generator, so the noise is the
same on any device); a call edits one source with a batch of instructions, and the batches of a unit are fixed
by the unit alone, so a resumed or sharded run reproduces the same pixels. torch/diffusers load on first use.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "ip2p": {"num_inference_steps": 20, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
    "flux-kontext": {"num_inference_steps": 28, "guidance_scale": 2.5},
    "qwen-image-edit": {"num_inference_steps": 50, "true_cfg_scale": 4.0, "negative_prompt": " "},
    "generic": {},
}
UNBATCHED = frozenset({"qwen-image-edit-plus"})
"""Families that read a list of images as several references for one prompt, so they edit one at a time."""


def family_of(pipeline_class: str) -> str:
    name = pipeline_class.lower()
    if "instructpix2pix" in name:
        return "ip2p"
    if "kontext" in name:
        return "flux-kontext"
    if "qwenimageeditplus" in name:
        return "qwen-image-edit-plus"
    if "qwenimageedit" in name:
        return "qwen-image-edit"
    return "generic"


class Editor(Protocol):
    """Edits one image with several instructions; returns one image per instruction, in order."""

    def fingerprint(self) -> dict[str, Any]: ...

    def edit(self, image: Image.Image, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]: ...


class DiffusersEditor:
    """A diffusers editing pipeline with per-family defaults, batching and per-edit seeds."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        call: dict[str, Any] | None = None,
        variant: str | None = None,
        pipe: Any = None,
    ) -> None:
        self.model, self.revision, self.variant = model, revision, variant
        self.batch_size = max(1, int(batch_size))
        self.user_call = dict(call or {})
        self._device, self._dtype = device, dtype
        self.pipe = pipe if pipe is not None else self._load()
        self.pipeline_class = type(self.pipe).__name__
        self.family = family_of(self.pipeline_class)
        if self.family in UNBATCHED:
            self.batch_size = 1
        accepted = set(inspect.signature(self.pipe.__call__).parameters)
        defaults = FAMILY_DEFAULTS.get(self.family.replace("-plus", ""), {})
        self.call = {k: v for k, v in {**defaults, **self.user_call}.items() if k in accepted}
        self._accepted = accepted

    def _load(self) -> Any:
        import torch
        from diffusers import DiffusionPipeline

        device = self._device if self._device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = (
            self._dtype if self._dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        )
        from diffusers.pipelines import pipeline_utils

        # diffusers >= 0.36 calls it `dtype` and warns about `torch_dtype`
        dtype_key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
        # safetensors only: a pickled .bin checkpoint named by a config must never be unpickled
        kwargs: dict[str, Any] = {dtype_key: getattr(torch, dtype_name), "use_safetensors": True}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.variant:
            kwargs["variant"] = self.variant
        pipe = DiffusionPipeline.from_pretrained(self.model, **kwargs).to(device)
        pipe.set_progress_bar_config(disable=True)
        self._device, self._dtype = device, dtype_name
        return pipe

    def _resolved_revision(self) -> str | None:
        """The hub commit a hub id resolved to (from the local cache, no network); None for a directory."""
        if os.path.isdir(self.model):
            return None
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(self.model, "model_index.json", revision=self.revision)
        except Exception:  # noqa: BLE001  (provenance is best effort, never a reason to fail a build)
            return None
        parts = Path(hit).parts if isinstance(hit, str) else ()
        return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None

    def fingerprint(self) -> dict[str, Any]:
        import diffusers
        import torch

        return {
            "resolved_revision": self._resolved_revision(),
            "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
            "model": self.model,
            "revision": self.revision,
            "variant": self.variant,
            "pipeline": self.pipeline_class,
            "family": self.family,
            "dtype": self._dtype,
            "call": dict(sorted(self.call.items())),
            "batch_size": self.batch_size,
        }

    def _size_args(self, image: Image.Image) -> dict[str, Any]:
        """The output size = the input size, for pipelines that would otherwise pick their own."""
        w, h = image.size
        extra: dict[str, Any] = {"height": h, "width": w}
        if self.family == "flux-kontext":
            extra.update(max_area=w * h, _auto_resize=False)
        return {k: v for k, v in extra.items() if k in self._accepted and k not in self.user_call}

    def edit(self, image: Image.Image, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        out: list[Image.Image] = []
        for a in range(0, len(prompts), self.batch_size):
            ps, ss = list(prompts[a : a + self.batch_size]), list(seeds[a : a + self.batch_size])
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in ss]
            many = len(ps) > 1
            res = self.pipe(
                prompt=ps if many else ps[0],
                image=[image] * len(ps) if many else image,
                generator=gens if many else gens[0],
                output_type="pil",
                **self._size_args(image),
                **self.call,
            )
            imgs = list(res.images)
            if len(imgs) != len(ps):
                raise RuntimeError(f"{self.pipeline_class} returned {len(imgs)} images for {len(ps)} prompts")
            out.extend(im.convert("RGB") for im in imgs)
        return out


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
