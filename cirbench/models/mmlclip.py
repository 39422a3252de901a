"""MML-CLIP, MMLandmarks' own model (`mml-clip:<checkpoint file or dir>`): CLIP, heads, GPS encoder.

Read in Oshkr/mml-codebase @ 9c167ac (`mmlandmarks/models/{mml_clip,encoders,location_encoder}.py`,
`evaluate_*.py`, `data/transforms.py`, `data/eval_dataset.py`):

- two frozen copies of HF `CLIPModel` (`image_encoder.clip_model`, `text_encoder.clip_model`); an image is
  `visual_projection(vision_model(x).pooler_output)`, a text `text_projection(text_model(...).pooler_output)`;
- one two-layer MLP head per modality (`{ground,satellite,text}_projector`: Linear, ReLU, Linear), so a
  ground photo and a satellite tile of the same pixels get different vectors: which head an image takes is
  its *view*;
- the GPS encoder (GeoCLIP's): Equal Earth projection of (lat, lon), then per scale a random-Fourier-feature
  layer (`b`, saved) + three Linear/ReLU + a head, summed over scales (`location_encoder.LocEnc{i}`);
- every vector L2-normalised (`--normalize_features`, on by default);
- images: PIL RGB, albumentations `Resize(336, 336, INTER_LINEAR_EXACT)` (no aspect, no crop, no
  antialiasing) on uint8, then CLIP's mean/std. Here: torch bilinear with half-pixel centres and no
  antialiasing, rounded back to uint8 (cv2's fixed-point variant may differ by one grey level on some
  pixels);
- texts: the backbone's CLIPTokenizer, padded to 77 tokens, truncated.

The checkpoint is what train.py writes, `torch.save(model.state_dict())` (`weights_best.pth`; read with
`torch.load(weights_only=True)`, or a safetensors copy), and it holds the backbone's weights too; the CLIP
architecture and tokenizer come from the backbone (option `backbone`, default the hub id mml-codebase
uses). A file whose keys are not that layout is refused, naming the missing and unexpected keys.

Views: a task that declares what each side shows (`TaskMetadata.views`; MMLandmarks reads them off the
direction: g2s, ground queries and a satellite gallery; t2c, text queries and a GPS gallery; ...) gives
them to `for_views`, and each side takes its view's head. GPS galleries exist under the geolocalisation
protocol `gps-gallery` (mml-codebase's gallery of coordinates); under the default `satellite-tiles` the
gallery is satellite tiles through the satellite head. On other tasks, images take the head named by
`image_view`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_int, parse_options
from cirbench.core.types import DatasetError, Role
from cirbench.models import _checkpoints as C
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import register_family

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

ADAPTER_VERSION = "1"
BACKBONE = "openai/clip-vit-large-patch14-336"
CHECKPOINT_NAMES = ("weights_best.pth", "model.safetensors", "weights_best.safetensors")
VIEWS = ("ground", "satellite")
SIDE_VIEWS = (*VIEWS, "text", "gps")
"""What a task may declare a side to show (`TaskMetadata.views`)."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_LENGTH = 77
MML_OPTIONS: OptionTable = (
    Option("backbone", help="the CLIP whose architecture and tokenizer the checkpoint uses",
           default=BACKBONE),
    T.REVISION, T.DEVICE, T.DTYPE,
    Option("image_view", "choice", "the head an image takes outside MMLandmarks", "ground", VIEWS),
    Option("image_size", "int", "input side in pixels (default: the backbone's)", low=1),
)
EQUAL_EARTH = (1.340264, -0.081106, 0.000893, 0.003796)


def equal_earth(latlon: torch.Tensor) -> torch.Tensor:
    """(N, 2) degrees -> (N, 2) Equal Earth (x, y), as location_encoder.py's equal_earth_projection."""
    import torch

    a1, a2, a3, a4 = EQUAL_EARTH
    lam, phi = torch.deg2rad(latlon[:, 1]), torch.deg2rad(latlon[:, 0])
    theta = torch.asin(math.sqrt(3.0) / 2.0 * torch.sin(phi))
    denom = 3.0 * (a1 + 3 * a2 * theta**2 + theta**6 * (7 * a3 + 9 * a4 * theta**2))
    x = 2.0 * math.sqrt(3.0) * lam * torch.cos(theta) / denom
    y = theta * (a1 + a2 * theta**2 + theta**6 * (a3 + a4 * theta**2))
    return torch.stack((x, y), dim=1)


def _modules(state: dict[str, Any], clip_config: Any) -> Any:
    """MmlCLIP's module tree with the checkpoint's shapes (names exactly as mml_clip.py defines them)."""
    import torch
    from torch import nn
    from transformers import CLIPModel

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip_model = CLIPModel(clip_config)

    class Fourier(nn.Module):
        def __init__(self, b: torch.Tensor) -> None:
            super().__init__()
            self.b = nn.Parameter(torch.empty_like(b), requires_grad=False)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            vp = 2 * np.pi * v @ self.b.T
            return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)

    def linear(prefix: str) -> nn.Linear:
        w = state[prefix + ".weight"]
        return nn.Linear(w.shape[1], w.shape[0])

    def projector(name: str) -> nn.Sequential:
        return nn.Sequential(linear(f"{name}.0"), nn.ReLU(), linear(f"{name}.2"))

    class Capsule(nn.Module):
        def __init__(self, p: str) -> None:
            super().__init__()
            self.capsule = nn.Sequential(
                Fourier(state[f"{p}.capsule.0.b"]), linear(f"{p}.capsule.1"), nn.ReLU(),
                linear(f"{p}.capsule.3"), nn.ReLU(), linear(f"{p}.capsule.5"), nn.ReLU())
            self.head = linear(f"{p}.head")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.capsule(x))

    class Location(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n
            for i in range(n):
                self.add_module(f"LocEnc{i}", Capsule(f"location_encoder.LocEnc{i}"))

        def forward(self, latlon: torch.Tensor) -> torch.Tensor:
            xy = equal_earth(latlon.float())
            return sum((getattr(self, f"LocEnc{i}")(xy) for i in range(self.n)), torch.zeros(()))

    class MmlClip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_encoder = Holder()
            self.text_encoder = Holder()
            n = len({k.split(".")[1] for k in state if k.startswith("location_encoder.LocEnc")})
            self.location_encoder = Location(n)
            self.logit_scale = nn.Parameter(torch.zeros(()))
            self.ground_projector = projector("ground_projector")
            self.satellite_projector = projector("satellite_projector")
            self.text_projector = projector("text_projector")

    return MmlClip()


class MmlClipEncoder:
    """MML-CLIP vectors for images (ground or satellite head), texts and GPS points (see module doc)."""

    family = "mml-clip"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoTokenizer, CLIPConfig

        opts = parse_options("the mml-clip adapter", {**T.stored_options(spec), **options}, MML_OPTIONS)
        target = model_id or (spec.id if spec else None)
        if not target:
            raise ValueError("mml-clip needs a checkpoint file or a directory holding weights_best.pth")
        self.path = C.find_checkpoint(target, CHECKPOINT_NAMES, "MML-CLIP")
        self.backbone = str(opts.get("backbone") or BACKBONE)
        self.revision = None if T.is_local(self.backbone) else T.opt_str(opts.get("revision"))
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        self.image_view = str(opts.get("image_view", "ground")).lower()
        if self.image_view not in VIEWS:
            raise ValueError(f"image_view must be one of {list(VIEWS)}, not {self.image_view!r}")
        self.views = {"query": self.image_view, "document": self.image_view}

        cfg = T.checked_config(self.backbone, self.revision, trust_remote_code=False, model_type="clip",
                               needs="MML-CLIP's backbone is a transformers CLIPModel")
        clip_config = CLIPConfig.from_dict(cfg)
        state = C.state_dict_of(C.read_checkpoint(self.path), self.path)
        state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}  # old buffers
        model = self._build(state, clip_config)
        kw = T.hf_kwargs(self.revision, False)
        with T.quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(self.backbone, **kw)
        size = opts.get("image_size", cfg.get("vision_config", {}).get("image_size", 224))
        self.image_size = as_int(size, "image_size")
        self.model = model.to(self.device, T.torch_dtype(self.dtype)).eval()
        self.weights = {"checkpoint": str(self.path), "local_digest": T.local_digest(self.path),
                        "format": "safetensors" if self.path.name.endswith(".safetensors") else
                        "torch.load(weights_only=True)",
                        "backbone": {"id": self.backbone,
                                     **T.weights_fingerprint(self.backbone, self.revision)}}
        dim = int(state["text_projector.2.weight"].shape[0])
        base = spec or ModelSpec(name=f"{self.family}:{target}", id=str(target), license="unknown",
                                 description=f"MML-CLIP (MMLandmarks) from {self.path}")
        self.spec = dataclasses.replace(base, dim=base.dim or dim, dtype=self.dtype,
                                        modalities=("image", "text", "gps"),
                                        extra={**dict(base.extra), "family": self.family})

    def _build(self, state: dict[str, Any], clip_config: Any) -> Any:
        """The module tree, its key layout checked against the file's before any tensor is assigned."""
        heads = [f"{h}_projector.{j}.{p}" for h in ("ground", "satellite", "text") for j in (0, 2)
                 for p in ("weight", "bias")]
        capsule = [f"location_encoder.LocEnc0.{m}" for m in ("capsule.0.b", "capsule.1.weight",
                                                             "capsule.3.weight", "capsule.5.weight",
                                                             "head.weight")]
        C.require_keys(self.path, state, [*heads, *capsule, "logit_scale"], "MML-CLIP")
        model = _modules(state, clip_config)
        expected = model.state_dict()
        C.check_layout(self.path, state, (k for k in expected if not k.endswith("position_ids")), "MML-CLIP")
        C.check_shapes(self.path, state, expected, {k: k for k in state}, "MML-CLIP backbone")
        model.load_state_dict(state, strict=False)  # strict on layout above; position_ids are buffers
        return model

    # ------------------------------------------------------------------ the task's declared views
    def for_views(self, views: Mapping[str, str]) -> MmlClipEncoder:
        """A copy whose sides take the heads of the views a task declares (`TaskMetadata.views`)."""
        chosen = {role: views[role] for role in ("query", "document") if role in views}
        bad = sorted(v for v in chosen.values() if v not in SIDE_VIEWS)
        if bad:
            raise ValueError(f"MML-CLIP has no head for the view(s) {bad}; it knows {list(SIDE_VIEWS)}")
        bound = copy.copy(self)
        bound.views = {**self.views, **chosen}
        return bound

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", **self.weights, "dtype": self.dtype,
                "views": dict(self.views), "image_size": self.image_size,
                "image_preprocessing": "resize to square, bilinear half-pixel, no antialias, uint8, CLIP "
                                       "mean/std (albumentations Resize INTER_LINEAR_EXACT + Normalize)",
                "text": {"padding": "max_length", "max_length": TEXT_LENGTH,
                         "tokenizer": type(self.tokenizer).__name__, "size": len(self.tokenizer)},
                "normalise": "L2 on every side", "runtime": T.runtime()}

    # ------------------------------------------------------------------ encoding
    def preprocess(self, image: Any) -> torch.Tensor:
        """PIL image -> (1, 3, S, S) normalised pixels (mml-codebase's val transform; worker threads)."""
        import torch

        arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        x = arr.permute(2, 0, 1).unsqueeze(0).float()
        x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                            align_corners=False, antialias=False)
        x = x.round().clamp(0, 255) / 255.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, dim) unit rows; MML-CLIP takes no instruction."""
        import torch
        from PIL import Image

        from cirbench.core.geo import parse_gps_text

        view = self.views.get(role, self.image_view)
        dim = self.spec.dim or 0
        out = torch.zeros(len(batch.items), dim, dtype=torch.float32)
        m = self.model
        wdtype = T.torch_dtype(self.dtype)
        images: list[tuple[int, Any]] = []
        texts: list[tuple[int, str]] = []
        points: list[tuple[int, tuple[float, float]]] = []
        for i, (it, img) in enumerate(zip(batch.items, batch.images, strict=True)):
            T.check_item(it, img)
            if view == "gps":
                p = parse_gps_text(it.text) if it.image is None else None
                if p is None:
                    raise DatasetError("a GPS gallery item must be a text gps:<lat>,<lon>", record=it.id,
                                       field="text")
                points.append((i, p))
            elif it.image is not None and it.text is not None:
                raise DatasetError("MML-CLIP embeds an image or a text, not both (no composed queries)",
                                   record=it.id)
            elif it.image is not None:
                images.append((i, self.preprocess(img) if isinstance(img, Image.Image) else img))
            else:
                texts.append((i, str(it.text)))
        with torch.inference_mode():
            if images:
                head = m.satellite_projector if view == "satellite" else m.ground_projector
                clip = m.image_encoder.clip_model
                px = torch.cat([p for _, p in images]).to(self.device, wdtype)
                feats = head(clip.visual_projection(clip.vision_model(pixel_values=px).pooler_output))
                out[[i for i, _ in images]] = feats.float().cpu()
            if texts:
                clip = m.text_encoder.clip_model
                tok = self.tokenizer([t for _, t in texts], padding="max_length", truncation=True,
                                     max_length=TEXT_LENGTH, return_tensors="pt")
                pooled = clip.text_model(input_ids=tok["input_ids"].to(self.device),
                                         attention_mask=tok["attention_mask"].to(self.device)).pooler_output
                out[[i for i, _ in texts]] = m.text_projector(clip.text_projection(pooled)).float().cpu()
            if points:
                ll = torch.tensor([p for _, p in points], dtype=torch.float32, device=self.device)
                out[[i for i, _ in points]] = m.location_encoder(ll).float().cpu()
        return T.to_numpy_f32(out)


def _mml_clip(spec: ModelSpec | None, target: str | None, **options: Any) -> MmlClipEncoder:
    return MmlClipEncoder(spec, model_id=target, **options)


register_family("mml-clip", _mml_clip, options=MML_OPTIONS)
