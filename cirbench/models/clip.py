"""Two-tower models (transformers CLIP, SigLIP, SigLIP2) and the CIR baselines built from their towers.

A composed query (image + text) has no native embedding in a two-tower model, so CIR papers report
baselines built from the towers; each is a named fusion mode here:

| fusion     | composed query vector                        | can embed                     |
|------------|----------------------------------------------|-------------------------------|
| `sum`      | normalise(î + t̂)  (Pic2Word's "mixture")     | image, text, image+text       |
| `weighted` | normalise((1 - alpha)·î + alpha·t̂)           | image, text, image+text       |
| `image`    | î  (the text is ignored)                     | image, image+text             |
| `text`     | t̂  (the image is ignored)                    | image, text, image+text       |

î and t̂ are the L2-normalised image- and text-tower outputs; `alpha` is the weight of the text (0.5 ranks
exactly like `sum`). Items with one modality use that modality's tower, on either side, so the gallery
(documents) is always embedded by the image tower. `fusion=image` cannot embed a text-only item, so such a
model is refused for text-query tasks before any encoding (ModelSpec.modalities).

Loaded with `AutoModel.from_pretrained` (safetensors only, remote code only when allowed), so any
transformers model with `get_image_features` / `get_text_features` works: `hf-clip:<hub id or dir>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_float, as_int
from cirbench.core.types import DatasetError, Item, Role
from cirbench.models import _images as I
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import register_family, register_model

if TYPE_CHECKING:
    import torch

FUSION_MODES = ("sum", "weighted", "image", "text")
ADAPTER_VERSION = "1"
"""Bumped when this adapter's numerics change, so cached vectors from an older adapter are not reused."""


def fusion_modalities(fusion: str) -> tuple[str, ...]:
    """What a two-tower model can embed under a fusion mode (see the module docstring)."""
    return ("image", "image+text") if fusion == "image" else ("image", "text", "image+text")


def parse_fusion(fusion: Any, alpha: Any) -> tuple[str, float | None]:
    mode = str(fusion or "sum").strip().lower()
    if mode in ("mixture", "late"):  # Pic2Word's name for the same baseline
        mode = "sum"
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {fusion!r}; use one of {list(FUSION_MODES)}")
    if mode != "weighted":
        return mode, None
    a = as_float(0.5 if alpha is None else alpha, "alpha")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha is the weight of the text in [0, 1], not {a}")
    return mode, a


def fused_name(base: str, fusion: str, alpha: float | None) -> str:
    """Distinct names per baseline, so result folders of `clip-b32` and `clip-b32+image` never collide."""
    if fusion == "sum":
        return base
    return f"{base}+{fusion}{alpha:g}" if fusion == "weighted" else f"{base}+{fusion}"


class TwoTowerEncoder:
    """Shared encode logic of two-tower models: routes items to towers and fuses per the fusion mode.

    Subclasses load the model and implement `_image_features(prepared)`, `_text_features(texts)`,
    `_prepare(pil_image)` and `_pixel_spec()`; this class never sees model-specific inputs. Images reach the
    image tower as the `decode` option says (see cirbench.models._images): decode=pil prepares each image
    with the model's own processor in the encode loop's workers; decode=torchvision reads bytes there and
    decodes and preprocesses the batch on the model's device.
    """

    spec: ModelSpec
    fusion: str
    alpha: float | None
    device: str
    decode: str = "pil"
    pixel_spec: I.PixelSpec | None = None
    """What decode=torchvision reproduces of the model's preprocessing (None with decode=pil)."""

    def _set_decode(self, value: Any) -> None:
        """Parse the `decode` option; for torchvision, read the preprocessing it must reproduce now, so an
        unsupported processor is refused at load time rather than at the first batch."""
        self.decode = I.parse_decode(value)
        self.pixel_spec = self._pixel_spec() if self.decode == "torchvision" else None

    def preprocess(self, image: Any) -> Any:
        """PIL image -> what `encode` takes: the processor's output (decode=pil), or the image itself
        (decode=torchvision, which resizes on the model's device)."""
        return self._prepare(image) if self.pixel_spec is None else image

    def read_image(self, item: Item) -> Any:
        """The encode loop's per-item hook, run in its worker threads: bytes only for decode=torchvision."""
        return I.read_encoded(item) if self.pixel_spec is not None else self._prepare(item.load_image())

    def _spec_name(self, base: str) -> str:
        """The fused name, plus the decode mode when it is not the default: its pixels differ from PIL's,
        so its results get their own folder and leaderboard row."""
        name = fused_name(base, self.fusion, self.alpha)
        return name if self.decode == "pil" else f"{name}+decode-{self.decode}"

    def _decode_fingerprint(self) -> dict[str, Any]:
        """Nothing for decode=pil, so the fingerprints (cache keys) of existing results stay valid."""
        if self.pixel_spec is None:
            return {}
        return {"decode": self.decode, "pixels": self.pixel_spec.to_dict()}

    def _image_inputs(self, images: Sequence[Any]) -> Any:
        if self.pixel_spec is not None:
            return I.pixels(images, self.pixel_spec, self.device)
        return [self._prepare(p) if _is_pil(p) else p for p in images]

    def _prepare(self, image: Any) -> Any:
        raise NotImplementedError

    def _pixel_spec(self) -> I.PixelSpec:
        raise NotImplementedError

    def _image_features(self, prepared: Any) -> torch.Tensor:
        """`prepared`: per-image processor outputs (decode=pil), or a pixel batch on the device."""
        raise NotImplementedError

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def _route(self, item: Item, image: Any, role: Role) -> tuple[bool, bool]:
        """(use the image tower, use the text tower) for one item."""
        has_img = item.image is not None and image is not None
        has_txt = item.text is not None
        if item.image is not None and image is None:
            raise DatasetError("batch carries no decoded image for an item that has one", record=item.id,
                               field="image")
        if has_img and has_txt and role == "query":
            return {"sum": (True, True), "weighted": (True, True), "image": (True, False),
                    "text": (False, True)}[self.fusion]
        if has_img:
            return True, False
        if has_txt:
            if self.fusion == "image":
                raise DatasetError(f"model {self.spec.name!r} (fusion=image) cannot embed a text-only item",
                                   record=item.id, field="text")
            return False, True
        raise DatasetError("item has neither image nor text", record=item.id)

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, dim) float32 unit rows. Two-tower models take no instruction; it is ignored."""
        import torch

        routes = [self._route(it, img, role) for it, img in zip(batch.items, batch.images, strict=True)]
        img_rows = [i for i, (ui, _) in enumerate(routes) if ui]
        txt_rows = [i for i, (_, ut) in enumerate(routes) if ut]
        feats_i = feats_t = None
        with torch.inference_mode():
            if img_rows:
                prepared = self._image_inputs([batch.images[i] for i in img_rows])
                feats_i = torch.nn.functional.normalize(self._image_features(prepared).float(), dim=-1)
            if txt_rows:
                texts = [str(batch.items[i].text) for i in txt_rows]
                feats_t = torch.nn.functional.normalize(self._text_features(texts).float(), dim=-1)
        dim = (feats_i if feats_i is not None else feats_t).shape[-1]  # type: ignore[union-attr]
        out = torch.zeros(len(routes), dim, dtype=torch.float32)
        w_t = 0.5 if self.alpha is None else self.alpha
        if feats_i is not None:
            for j, i in enumerate(img_rows):
                both = routes[i][1]
                out[i] += feats_i[j].cpu() * ((1.0 - w_t) if both else 1.0)
        if feats_t is not None:
            for j, i in enumerate(txt_rows):
                both = routes[i][0]
                out[i] += feats_t[j].cpu() * (w_t if both else 1.0)
        return T.to_numpy_f32(out)


def _is_pil(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


# ----------------------------------------------------------------------------- transformers CLIP / SigLIP
MAX_LENGTH_PADDING = ("siglip", "siglip2")
"""Model types whose text tower was trained on text padded to a fixed length (64 for SigLIP/SigLIP2):
their pooled token is the last position, so padding to the longest text in a batch would change vectors."""

FUSION = Option("fusion", help="how a composed query is embedded: sum, weighted, image or text",
                default="sum")
ALPHA = Option("alpha", "float", "weight of the text in [0, 1] with fusion=weighted", 0.5)
DECODE = Option("decode", "choice", "where images are resized: pil (decode workers) or torchvision (on "
                "the model's device)", "pil", I.DECODE_MODES, parser=I.parse_decode)
HF_OPTIONS: OptionTable = (
    *T.LOADING, FUSION, ALPHA, DECODE,
    Option("lowercase", "bool", "lowercase texts (SigLIP2's training default)", False),
    Option("max_length", "int", "text tokens (default: the text tower's position limit)", low=1),
)
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
"""PIL resample codes (transformers' `resample`) that torch resizes the same way."""


class HFTwoTowerEncoder(TwoTowerEncoder):
    """A transformers two-tower model (CLIP, SigLIP, SigLIP2, ...) through AutoModel + AutoProcessor.

    Options: revision, fusion (sum|weighted|image|text), alpha, device (cpu|cuda|auto), dtype
    (float32|bfloat16|float16; default float32 as in the models' own examples), trust_remote_code
    (default False), allow_pickle (default False), lowercase (lowercase texts, SigLIP2's training default),
    max_length (text tokens; default the text tower's position limit), decode (pil|torchvision; torchvision
    reproduces CLIPImageProcessor and SiglipImageProcessor, not SigLIP2's patch-based one).
    """

    family = "hf-clip"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoModel, AutoProcessor

        opts, source, self.revision = T.adapter_target(self.family, spec, model_id, options, HF_OPTIONS)
        self.source = source
        self.fusion, self.alpha = parse_fusion(opts.get("fusion"), opts.get("alpha"))
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        trc, allow_pickle = T.safety_options(opts)
        self.lowercase = as_bool(opts.get("lowercase", False), "lowercase")

        cfg = T.config_dict(source, self.revision)
        T.check_remote_code(source, cfg, trust_remote_code=trc)
        model, self.weights = T.load_pretrained(AutoModel, source, revision=self.revision, dtype=self.dtype,
                                                trust_remote_code=trc, allow_pickle=allow_pickle)
        with T.quiet_transformers():
            processor = AutoProcessor.from_pretrained(source, **T.hf_kwargs(self.revision, trc))
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(f"{source} loads as {type(model).__name__}, which has no image and text towers "
                             "(get_image_features / get_text_features); hf-clip needs a two-tower model")
        self.model = model.to(self.device).eval()
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.model_type = str(cfg.get("model_type", ""))
        text_cfg = getattr(model.config, "text_config", None)
        limit = getattr(text_cfg, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_length = (as_int(opts["max_length"], "max_length") if opts.get("max_length") is not None
                           else int(min(limit, self.tokenizer.model_max_length or limit)))
        self.padding: bool | str = "max_length" if self.model_type in MAX_LENGTH_PADDING else True
        self._in_dtype = next(self.model.parameters()).dtype
        self._set_decode(opts.get("decode"))

        dim = getattr(model.config, "projection_dim", None) or getattr(
            getattr(model.config, "vision_config", None), "hidden_size", None)
        base = spec or ModelSpec(name=f"{self.family}:{source}", id=source, license="unknown",
                                 description=f"transformers {type(model).__name__} loaded from {source}")
        self.spec = dataclasses.replace(
            base, name=self._spec_name(base.name), revision=self.revision,
            dim=base.dim or dim, modalities=fusion_modalities(self.fusion), dtype=self.dtype,
            extra={**dict(base.extra), "family": self.family, "fusion": self.fusion, "alpha": self.alpha,
                   "decode": self.decode})

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source,
                **self.weights, **self._decode_fingerprint(),
                "model_class": type(self.model).__name__, "dtype": self.dtype,
                "fusion": self.fusion, "alpha": self.alpha,
                "image_processor": T.processor_config(self.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)},
                "text": {"padding": self.padding, "max_length": self.max_length, "lowercase": self.lowercase}}

    def _prepare(self, image: Any) -> dict[str, torch.Tensor]:
        out = self.image_processor(images=[image], return_tensors="pt")
        return {k: v for k, v in out.items() if hasattr(v, "shape")}

    def _pixel_spec(self) -> I.PixelSpec:
        """CLIPImageProcessor (shortest edge, centre crop) or SiglipImageProcessor (fixed size), as set."""
        p = self.image_processor
        name = type(p).__name__
        if not name.startswith(("CLIPImageProcessor", "SiglipImageProcessor")):
            raise ValueError(f"decode=torchvision reproduces CLIPImageProcessor and SiglipImageProcessor; "
                             f"{self.source} uses {name}: use decode=pil")
        size, crop = _size(p.size), _size(p.crop_size) if getattr(p, "do_center_crop", False) else None
        if not getattr(p, "do_resize", True) or size is None:
            raise ValueError(f"decode=torchvision needs a fixed resize; {name} of {self.source} has size "
                             f"{p.size!r}: use decode=pil")
        resample = getattr(p, "resample", 3)
        interpolation = getattr(resample, "value", resample)  # an InterpolationMode, or a PIL code
        interpolation = _PIL_RESAMPLE.get(interpolation, str(interpolation))
        scale = float(p.rescale_factor) if getattr(p, "do_rescale", True) else 1.0
        mean, std = (p.image_mean, p.image_std) if getattr(p, "do_normalize", True) else (0.0, 1.0)
        return I.PixelSpec(resize=size[0], size=size[1], crop=crop[1] if crop else None, crop_round=False,
                           interpolation=interpolation, mean=I.per_channel(mean), std=I.per_channel(std),
                           scale=scale)

    def _image_features(self, prepared: Sequence[Mapping[str, Any]] | torch.Tensor) -> torch.Tensor:
        import torch

        if isinstance(prepared, torch.Tensor):
            inputs = {"pixel_values": prepared}
        else:
            inputs = {k: I.to_device(torch.cat([p[k] for p in prepared]), self.device) for k in prepared[0]}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._in_dtype)
        return _pooled(self.model.get_image_features(**inputs))

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        if self.lowercase:
            texts = [t.lower() for t in texts]
        tok = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        keep = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return _pooled(self.model.get_text_features(**keep))


def _size(size: Any) -> tuple[str, tuple[int, int]] | None:
    """A transformers size (dict or SizeDict) as ("shortest", (s, s)) or ("exact", (h, w)); None otherwise."""
    if size is None:
        return None
    keys = ("shortest_edge", "longest_edge", "height", "width")
    d = size if isinstance(size, Mapping) else {k: getattr(size, k, None) for k in keys}
    edge, h, w = d.get("shortest_edge"), d.get("height"), d.get("width")
    if edge and not d.get("longest_edge"):
        return "shortest", (int(edge), int(edge))
    return ("exact", (int(h), int(w))) if h and w else None


def _pooled(out: Any) -> torch.Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x a ModelOutput with pooler_output."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ----------------------------------------------------------------------------- registry
def _hf(spec: ModelSpec | None, target: str | None, **options: Any) -> HFTwoTowerEncoder:
    return HFTwoTowerEncoder(spec, model_id=target, **options)


_TWO_TOWER = ("image", "text", "image+text")
_OPENAI_NOTE = ("Licence: MIT per the openai/CLIP repository (the hub card declares none). Revision "
                "pinned as in mteb's registry.")
ALIASES = [
    ModelSpec(name="clip-b32", id="openai/clip-vit-base-patch32",
              revision="3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268", dim=512, modalities=_TWO_TOWER,
              license="MIT", parameters=151_000_000,
              description=f"OpenAI CLIP ViT-B/32 (transformers). {_OPENAI_NOTE}",
              extra={"family": "hf-clip"}),
    ModelSpec(name="clip-b16", id="openai/clip-vit-base-patch16",
              revision="57c216476eefef5ab752ec549e440a49ae4ae5f3", dim=512, modalities=_TWO_TOWER,
              license="MIT", parameters=151_000_000,
              description=f"OpenAI CLIP ViT-B/16 (transformers). {_OPENAI_NOTE}",
              extra={"family": "hf-clip"}),
    ModelSpec(name="clip-l14", id="openai/clip-vit-large-patch14",
              revision="32bd64288804d66eefd0ccbe215aa642df71cc41", dim=768, modalities=_TWO_TOWER,
              license="MIT", parameters=428_000_000,
              description=f"OpenAI CLIP ViT-L/14 at 224 px (transformers). {_OPENAI_NOTE}",
              extra={"family": "hf-clip"}),
    ModelSpec(name="siglip-b16", id="google/siglip-base-patch16-224",
              revision="7fd15f0689c79d79e38b1c2e2e2370a7bf2761ed", dim=768, modalities=_TWO_TOWER,
              license="Apache-2.0", parameters=203_155_970,
              description="SigLIP B/16 at 224 px; texts padded to 64 tokens as in training. Its tokenizer "
                          "needs the sentencepiece package. Revision pinned as in mteb's registry.",
              extra={"family": "hf-clip"}),
    ModelSpec(name="siglip-so400m", id="google/siglip-so400m-patch14-384",
              revision="9fdffc58afc957d1a03a25b10dba0329ab15c2a3", dim=1152, modalities=_TWO_TOWER,
              license="Apache-2.0", parameters=877_960_498,
              description="SigLIP So400m/14 at 384 px; texts padded to 64 tokens. Its tokenizer needs the "
                          "sentencepiece package. Revision pinned as in mteb's registry.",
              extra={"family": "hf-clip"}),
    ModelSpec(name="siglip2", id="google/siglip2-base-patch16-224",
              revision="75de2d55ec2d0b4efc50b3e9ad70dba96a7b2fa2", dim=768, modalities=_TWO_TOWER,
              license="Apache-2.0",
              description="SigLIP2 B/16 at 224 px; texts lowercased and padded to 64 tokens (SigLIP2's "
                          "training defaults). Revision as pinned by several public projects (not in mteb).",
              extra={"family": "hf-clip", "options": {"lowercase": True}}),
]
for _spec in ALIASES:
    register_model(_spec, _hf, options=HF_OPTIONS)
register_family("hf-clip", _hf, options=HF_OPTIONS)
