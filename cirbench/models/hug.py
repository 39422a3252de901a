"""HUG (AAAI 2026, tanghme0w/AAAI26-HUG): BLIP-2 Q-Former means with uncertainty heads (`hug:<checkpoint>`).

Read in tanghme0w/AAAI26-HUG @ f02cb11 (`models/{hug_model,blip_backbone,uncertainty_head}.py`,
`modules/{losses,dynamic_weighting}.py`, `eval.py`, `data/{dataset,transforms}.py`):

- means: LAVIS `Blip2Qformer` (`pretrain`) features *before* the projections, 32 query tokens x 768. A
  gallery image's mean μ_c is the image pass (`extract_features(mode="image").image_embeds`); a query's μ_q is
  the multimodal pass over (reference, text) (`multimodal_embeds`, the query-token outputs);
- uncertainties (standard deviations, same shape): three estimators, each one `nn.TransformerEncoderLayer`
  (4 heads, feed-forward 4x, GELU, post-norm, batch-first) then Linear, GELU, Linear, Softplus. σ_c is the
  visual estimator on μ_c; the query's σ_q mixes σ_r (visual estimator on the reference's image pass), σ_t
  (text estimator on the text pass's unprojected [CLS] output, repeated over the 32 tokens) and σ_m
  (multimodal estimator on μ_q): w_x = exp(-σ_x²) / (Σ exp(-σ²) + 1e-6), σ_q = sqrt(Σ w_x σ_x² + 1e-6);
- distance (`uncertainty_aware_distance`): d = ‖μ_q − μ_c‖²_F + ‖σ_q‖²_F + ‖σ_c‖²_F, smaller is closer.

The released evaluator fills the distance matrix one (query, gallery) pair at a time in Python. Here each
side is one vector whose inner product is exactly −d:

    query   [2·μ_q, −1, −(‖μ_q‖² + ‖σ_q‖²)]      gallery [μ_c, ‖μ_c‖² + ‖σ_c‖², 1]
    ⟨q, g⟩ = 2⟨μ_q, μ_c⟩ − ‖μ_c‖² − ‖σ_c‖² − ‖μ_q‖² − ‖σ_q‖² = −d

so cirbench's exact search ranks by d at any gallery size, and a run's scores are −d. The lengths carry the
score, so the vectors are not L2-normalised (`unit_vectors = False`); they are 32·768 + 2 floats wide
(float32 search; a bfloat16 search would round the squared norms). The query side needs the role: a
composed item embeds as a query, an image as a gallery item.

Inputs as HUG's eval: images resized to 224² bicubic, CLIP mean/std (`get_transform(is_train=False)`, the
backbone's BlipImageProcessor with the PIL backend); text through LAVIS's `blip_caption` processor
(`pre_caption`, 50 words), bert-base-uncased with `[DEC]`, truncated at 77 tokens. HUG's FashionIQ loader
joins a triplet's two captions with ", "; cirbench's FashionIQ task decides the join (see its protocol).

Checkpoint: what HUG's train.py saves, `{'model_state_dict': HUGModel.state_dict(), 'args': ..., 'epoch',
'optimizer_state_dict'}` (read with `torch.load(weights_only=True)`; an `args` saved as an argparse
Namespace is not plain data and is refused), or a safetensors file of the state dict alone. Keys:
`blip_backbone.blip_model.<LAVIS Blip2Qformer>` (mapped into transformers' BLIP-2: models/_lavis_blip2.py),
`{visual,text,multimodal}_uncertainty_estimator.{transformer_layer,uncertainty_head}.*`, and HUGModel's own
`query_tokens` (saved, never used at inference: the backbone's are). Anything else is refused.
No HUG checkpoint is public (2026-12).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_int, check_options
from cirbench.core.types import DatasetError, Role
from cirbench.models import _checkpoints as C
from cirbench.models import _lavis_blip2 as L
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.blip2 import pre_caption
from cirbench.models.registry import register_family

if TYPE_CHECKING:
    import torch

ADAPTER_VERSION = "1"
CHECKPOINT_NAMES = ("best_model.pth", "checkpoint.pth", "model.safetensors")
BACKBONE_PREFIX = "blip_backbone.blip_model."
ESTIMATORS = ("visual", "text", "multimodal")
HUG_OPTIONS = ("backbone", "revision", "device", "dtype", "max_length", "max_words", "pre_caption",
               "uncertainty_heads")
EPS = 1e-6
DISTANCE = ("d = ||mu_q - mu_c||_F^2 + ||sigma_q||_F^2 + ||sigma_c||_F^2 (HUG uncertainty_aware_distance); "
            "score = <[2 mu_q, -1, -(||mu_q||^2 + ||sigma_q||^2)], [mu_c, ||mu_c||^2 + ||sigma_c||^2, 1]> "
            "= -d")


def _estimators(hidden: int, ff: int, heads: int) -> Any:
    """HUG's three UncertaintyEstimators, named as HUGModel names them (inference: dropout off)."""
    from torch import nn

    class Estimator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer_layer = nn.TransformerEncoderLayer(
                d_model=hidden, nhead=heads, dim_feedforward=ff, dropout=0.0, activation="gelu",
                batch_first=True)
            self.uncertainty_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(0.0),
                                                  nn.Linear(hidden, hidden), nn.Softplus())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.uncertainty_head(self.transformer_layer(x))

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ESTIMATORS:
                self.add_module(f"{name}_uncertainty_estimator", Estimator())

    return Heads()


def mix_uncertainty(sigma_r: torch.Tensor, sigma_t: torch.Tensor, sigma_m: torch.Tensor) -> torch.Tensor:
    """HUG's dynamic weighting (Eq. 10-11): softmax-like weights exp(-σ²), then the weighted variance."""
    import torch

    sq = [s**2 for s in (sigma_r, sigma_t, sigma_m)]
    w = [torch.exp(-s) for s in sq]
    den = w[0] + w[1] + w[2] + EPS
    return torch.sqrt(sum((wi / den * si for wi, si in zip(w, sq, strict=True)), torch.zeros(())) + EPS)


class HugEncoder:
    """HUG's means and uncertainties as vectors whose inner product is −d (see the module docstring)."""

    family = "hug"
    unit_vectors = False

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        opts = {**dict((spec.extra.get("options") or {}) if spec else {}), **options}
        check_options("hug adapter", opts, HUG_OPTIONS)
        target = model_id or (spec.id if spec else None)
        if not target:
            raise ValueError("hug needs a checkpoint file (HUG's best_model.pth) or a directory holding one")
        self.path = C.find_checkpoint(target, CHECKPOINT_NAMES, "HUG")
        self.backbone = str(opts.get("backbone") or L.BACKBONE)
        self.revision = None if T.is_local(self.backbone) else T.opt_str(opts.get("revision"))
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        self.max_length = as_int(opts.get("max_length", 77), "max_length")
        self.max_words = as_int(opts.get("max_words", 50), "max_words")
        self.pre_caption = as_bool(opts.get("pre_caption", True), "pre_caption")
        self.heads = as_int(opts.get("uncertainty_heads", 4), "uncertainty_heads")

        safetensors = self.path.name.endswith(".safetensors")
        obj = C.read_checkpoint(self.path)
        state = C.state_dict_of(obj, self.path, None if safetensors else "model_state_dict")
        config = L.blip2_config(self.backbone, self.revision)
        self.model = L.load_lavis_blip2(self.path, state, config, "HUG", prefix=BACKBONE_PREFIX)
        self.estimators = self._load_estimators(state)
        self.model.to(self.device, T.torch_dtype(self.dtype)).eval()
        self.estimators.to(self.device, T.torch_dtype(self.dtype)).eval()
        kw = T.hf_kwargs(self.revision, False)
        with T.quiet_transformers():
            self.image_processor = AutoImageProcessor.from_pretrained(
                self.backbone, **T.backend_kwargs("pil"), **kw)
            self.tokenizer = AutoTokenizer.from_pretrained(self.backbone, **kw)
        self.tokenizer.padding_side = "right"
        self.n_query = int(config.num_query_tokens)
        self.hidden = int(config.qformer_config.hidden_size)
        self.weights = {"checkpoint": str(self.path), "local_digest": T.local_digest(self.path),
                        "format": "safetensors" if safetensors else "torch.load(weights_only=True)",
                        "backbone": {"id": self.backbone,
                                     **T.weights_fingerprint(self.backbone, self.revision)}}
        dim = self.n_query * self.hidden + 2
        base = spec or ModelSpec(name=f"{self.family}:{target}", id=str(target), license="MIT (code)",
                                 description=f"HUG (BLIP-2 Q-Former + uncertainty heads) from {self.path}")
        self.spec = dataclasses.replace(base, dim=dim, dtype=self.dtype, modalities=("image", "image+text"),
                                        extra={**dict(base.extra), "family": self.family})

    def _load_estimators(self, state: dict[str, Any]) -> Any:
        """The three heads, sized from the file, the keys outside the backbone checked exactly."""
        first = "visual_uncertainty_estimator.transformer_layer."
        C.require_keys(self.path, state, [first + "linear1.weight", "query_tokens"], "HUG")
        ff, hidden = (int(x) for x in state[first + "linear1.weight"].shape)
        heads = _estimators(hidden, ff, self.heads)
        expected = heads.state_dict()
        own = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIX)}
        C.check_layout(self.path, own, [*expected, "query_tokens"], "HUG")
        C.check_shapes(self.path, own, expected, {k: k for k in expected}, "HUG uncertainty head")
        heads.load_state_dict({k: own[k] for k in expected}, strict=True)
        return heads

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", **self.weights, "dtype": self.dtype,
                "mean": "Q-Former last_hidden_state of the query tokens (unprojected)",
                "uncertainty_heads": self.heads, "distance": DISTANCE, "unit_vectors": False,
                "max_length": self.max_length, "pre_caption": self.pre_caption, "max_words": self.max_words,
                "image_processor": T.processor_config(self.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)},
                "runtime": T.runtime()}

    def preprocess(self, image: Any) -> Any:
        """PIL image -> (1, 3, H, W) pixels; runs in the encode loop's worker threads."""
        return self.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]

    # ------------------------------------------------------------------ the two sides
    def gallery_parts(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_c, σ_c) of gallery images, each (n, 32, hidden)."""
        mu = L.image_pass(self.model, L.vision(self.model, pixels.to(self.device)))
        return mu, self.estimators.visual_uncertainty_estimator(mu)

    def query_parts(self, pixels: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_q, σ_q) of composed queries, each (n, 32, hidden)."""
        e = self.estimators
        img = L.vision(self.model, pixels.to(self.device))
        tok = self.tokenizer([pre_caption(t, self.max_words) if self.pre_caption else t for t in texts],
                             padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        q = self.model.query_tokens.expand(img.shape[0], -1, -1)
        mu = L.fused_pass(self.model, ids, mask, q, img)[:, : self.n_query]
        sigma_m = e.multimodal_uncertainty_estimator(mu)
        sigma_r = e.visual_uncertainty_estimator(L.image_pass(self.model, img))
        cls = L.text_pass(self.model, ids, mask)[:, :1].expand(-1, self.n_query, -1)
        sigma_t = e.text_uncertainty_estimator(cls)
        return mu, mix_uncertainty(sigma_r, sigma_t, sigma_m)

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, 32·hidden + 2) augmented vectors (queries: composed items; gallery: images); not unit."""
        import torch
        from PIL import Image

        want = "image+text" if role == "query" else "image"
        for it, img in zip(batch.items, batch.images, strict=True):
            T.check_item(it, img)
            got = "image+text" if it.image is not None and it.text is not None else \
                "image" if it.image is not None else "text"
            if got != want:
                raise DatasetError(f"HUG embeds a {'query' if role == 'query' else 'gallery item'} from "
                                   f"{want}, not {got}", record=it.id)
        rows: list[Any] = [self.preprocess(img) if isinstance(img, Image.Image) else img
                           for img in batch.images]
        pixels = torch.cat(rows).to(T.torch_dtype(self.dtype))
        with torch.inference_mode():
            if role == "query":
                mu, sigma = self.query_parts(pixels, [str(it.text) for it in batch.items])
            else:
                mu, sigma = self.gallery_parts(pixels)
            mu, sigma = mu.float().flatten(1), sigma.float().flatten(1)
            sq = (mu**2).sum(1, keepdim=True) + (sigma**2).sum(1, keepdim=True)
            one = torch.ones_like(sq)
            out = torch.cat([2 * mu, -one, -sq], 1) if role == "query" else torch.cat([mu, sq, one], 1)
        return out.cpu().numpy().astype(np.float32, copy=False)


HUG_TABLE: OptionTable = (
    Option("backbone", "str", "the BLIP-2 backbone (hub id or directory) whose Q-Former HUG fine-tuned",
           L.BACKBONE),
    T.REVISION, T.DEVICE, T.DTYPE,
    Option("max_length", "int", "text tokens", 77, low=1),
    Option("max_words", "int", "words kept by pre_caption", 50, low=1),
    Option("pre_caption", "bool", "clean texts as LAVIS's pre_caption does", True),
    Option("uncertainty_heads", "int", "uncertainty estimators in the checkpoint", 4, low=1),
)


def _family(spec: ModelSpec | None, target: str | None, **options: Any) -> HugEncoder:
    return HugEncoder(spec, model_id=target, **options)


register_family("hug", _family, options=HUG_TABLE)
