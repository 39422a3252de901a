"""diffusers pipelines as components: instruction-guided image editors and text-to-image generators.

One loader for every family diffusers ships (InstructPix2Pix, FLUX.1 Kontext, Qwen-Image-Edit, Stable
Diffusion, FLUX, Qwen-Image, ...), by hub id or local directory: `DiffusionPipeline.from_pretrained(model)`
picks the class from model_index.json (safetensors only), and a small table adds the call arguments each
family needs. Only arguments the pipeline's `__call__` accepts are passed. Every image has its own seed (a
CPU generator, so the noise is the same on any device). The EDIR builder and the generative retrieval methods
(Paracosm) both use these classes.

Each pipeline counts what it really ran: `stats["generations"]`, `stats["diffusion_steps"]` (the scheduler's
timesteps per call) and `stats["denoiser_calls"]` (forward passes of the UNet/transformer, counted by a hook:
twice the steps under true CFG, once with batched CFG).
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
    "qwen-image": {"num_inference_steps": 50, "true_cfg_scale": 4.0, "negative_prompt": " "},
    "flux": {"num_inference_steps": 28, "guidance_scale": 3.5},
    "stable-diffusion": {"num_inference_steps": 50, "guidance_scale": 7.5},
    "generic": {},
}
UNBATCHED = frozenset({"qwen-image-edit-plus"})
"""Families that read a list of images as several references for one prompt, so they edit one at a time."""

DEFAULT_EDITOR = "Qwen/Qwen-Image-Edit"
DEFAULT_T2I = "Qwen/Qwen-Image"
EDITOR_IDS = {
    "qwen-image-edit": "Qwen/Qwen-Image-Edit",
    "flux-kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "instruct-pix2pix": "timbrooks/instruct-pix2pix",
}
"""Short names a config may use for the editors Paracosm's paper and cirbench's builders name."""


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
    if "qwenimage" in name:
        return "qwen-image"
    if "flux" in name:
        return "flux"
    if "stablediffusion" in name:
        return "stable-diffusion"
    return "generic"


class Editor(Protocol):
    """Edits one image with several instructions; returns one image per instruction, in order."""

    def fingerprint(self) -> dict[str, Any]: ...

    def edit(self, image: Image.Image, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]: ...


class TextToImage(Protocol):
    """Renders each prompt under its own seed; one image per prompt, in order."""

    def fingerprint(self) -> dict[str, Any]: ...

    def render(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]: ...


def _denoiser(pipe: Any) -> Any:
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "register_forward_hook"):
            return module
    return None


class DiffusersPipeline:
    """A diffusers pipeline loaded once, with the family's call defaults and counters of what it ran."""

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
        self.stats: dict[str, int] = {"generations": 0, "diffusion_steps": 0, "denoiser_calls": 0}
        module = _denoiser(self.pipe)
        if module is not None:
            module.register_forward_hook(self._count_pass)

    def _count_pass(self, *_: Any) -> None:
        self.stats["denoiser_calls"] += 1

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

        out: dict[str, Any] = {
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
        if os.path.isdir(self.model):  # a local directory: which weights (names, sizes, mtimes)
            from cirbench.models._torch import local_digest

            out["local_digest"] = local_digest(self.model)
        return out

    def _size_args(self, width: int, height: int) -> dict[str, Any]:
        """The output size, for pipelines that would otherwise pick their own."""
        extra: dict[str, Any] = {"height": height, "width": width}
        if self.family == "flux-kontext":
            extra.update(max_area=width * height, _auto_resize=False)
        return {k: v for k, v in extra.items() if k in self._accepted and k not in self.user_call}

    def _run(self, n: int, **kwargs: Any) -> list[Image.Image]:
        res = self.pipe(output_type="pil", **kwargs, **self.call)
        imgs = list(res.images)
        if len(imgs) != n:
            raise RuntimeError(f"{self.pipeline_class} returned {len(imgs)} images for {n} prompts")
        timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        steps = 0 if timesteps is None else len(timesteps)
        self.stats["generations"] += n
        self.stats["diffusion_steps"] += n * (steps or int(self.call.get("num_inference_steps", 0)))
        return [im.convert("RGB") for im in imgs]


class DiffusersEditor(DiffusersPipeline):
    """A diffusers editing pipeline with per-family defaults, batching and per-edit seeds."""

    def edit(self, image: Image.Image, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        out: list[Image.Image] = []
        for a in range(0, len(prompts), self.batch_size):
            ps, ss = list(prompts[a : a + self.batch_size]), list(seeds[a : a + self.batch_size])
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in ss]
            many = len(ps) > 1
            out += self._run(
                len(ps),
                prompt=ps if many else ps[0],
                image=[image] * len(ps) if many else image,
                generator=gens if many else gens[0],
                **self._size_args(*image.size),
            )
        return out


class DiffusersTextToImage(DiffusersPipeline):
    """A diffusers text-to-image pipeline at a fixed square size, one image per prompt and seed."""

    def __init__(self, model: str, *, size: int = 512, **kwargs: Any) -> None:
        self.size = int(size)
        super().__init__(model, **kwargs)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "size": self.size}

    def render(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        out: list[Image.Image] = []
        for a in range(0, len(prompts), self.batch_size):
            ps, ss = list(prompts[a : a + self.batch_size]), list(seeds[a : a + self.batch_size])
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in ss]
            many = len(ps) > 1
            out += self._run(
                len(ps),
                prompt=ps if many else ps[0],
                generator=gens if many else gens[0],
                **self._size_args(self.size, self.size),
            )
        return out


__all__ = [
    "DEFAULT_EDITOR",
    "DEFAULT_T2I",
    "EDITOR_IDS",
    "FAMILY_DEFAULTS",
    "UNBATCHED",
    "DiffusersEditor",
    "DiffusersPipeline",
    "DiffusersTextToImage",
    "Editor",
    "TextToImage",
    "family_of",
]
