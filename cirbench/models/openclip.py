"""open_clip models (`open_clip:<target>`) with the same CIR fusion baselines as the transformers CLIPs.

Targets, as open_clip names them:
- `ViT-B-32/laion2b_s34b_b79k`: a built-in architecture and a pretrained tag (open_clip downloads the tag's
  file; tags carry no revision, so these are unpinned);
- `ViT-B-32//path/to/weights.safetensors` (or the option `pretrained=<file>`): a built-in architecture and a
  local checkpoint file;
- `hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K`: a hub repo with open_clip_config.json; fetched at the
  `revision` option (pinned for the aliases) with only safe files, then loaded as a local directory;
- `local-dir:/path/to/dir`: a directory holding open_clip_config.json and the weights.

Weights must be safetensors: pickled checkpoints (.bin/.pt/.pth) are refused unless `allow_pickle=True`
(open_clip then still unpickles with torch.load(weights_only=True)). Fusion modes, alpha and modalities are
those of cirbench.models.clip.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cirbench.core.options import Option, OptionTable, as_bool, parse_options
from cirbench.models import _images as I
from cirbench.models import _torch as T
from cirbench.models.base import ModelSpec
from cirbench.models.clip import ALPHA, DECODE, FUSION, TwoTowerEncoder, fusion_modalities, parse_fusion
from cirbench.models.registry import register_family, register_model

if TYPE_CHECKING:
    import torch

ADAPTER_VERSION = "1"
OC_OPTIONS: OptionTable = (
    *T.LOADING, FUSION, ALPHA, DECODE,
    Option("pretrained", help="open_clip pretrained tag or weights file (default: from the target)"),
    Option("quick_gelu", "bool", "force QuickGELU activations (default: as the model config says)"),
)
PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
SAFE_HUB_FILES = ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer*",
                  "special_tokens_map.json", "vocab*", "merges.txt", "spiece.model", "*.tiktoken"]
"""What an hf-hub open_clip repo needs besides pickles: config, safetensors weights, tokenizer files."""


def _is_pickle(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(T.PICKLE_SUFFIXES)


def _refuse_pickle(what: str, path: str | os.PathLike[str], allow_pickle: bool) -> None:
    if _is_pickle(path) and not allow_pickle:
        raise T.PickleRefused(
            f"{what} resolves to the pickle file {os.fspath(path)!r}; loading a pickle can run arbitrary "
            "code. Use a .safetensors checkpoint, or pass allow_pickle=True if you trust the file.")


def _dir_checkpoint(path: Path) -> Path | None:
    """The file open_clip's local-dir loader would pick (safetensors first, then its preferred names)."""
    try:
        from open_clip.factory import _find_checkpoint_in_dir

        found = _find_checkpoint_in_dir(path)
        return Path(found) if found else None
    except ImportError:  # older open_clip: same preference, done here
        files = sorted(path.glob("*.safetensors")) or sorted(
            list(path.glob("*.bin")) + list(path.glob("*.pth")) + list(path.glob("*.pt")))
        return files[0] if files else None


class OpenCLIPEncoder(TwoTowerEncoder):
    """An open_clip model (CLIP, SigLIP-in-open_clip, ...) with CIR fusion baselines.

    Options: revision (hf-hub targets), fusion (sum|weighted|image|text), alpha, device, dtype
    (float32|bfloat16|float16, open_clip's fp32/bf16/fp16 precisions), allow_pickle (default False),
    pretrained (tag or file, instead of putting it in the target), quick_gelu (default: what the pretrained
    tag was trained with), decode (pil|torchvision; torchvision reproduces resize_mode shortest (square) and
    squash). trust_remote_code is accepted for uniformity; open_clip runs no repository code.
    """

    family = "open_clip"

    def __init__(self, spec: ModelSpec | None = None, *, target: str | None = None, **options: Any) -> None:
        import open_clip

        opts = parse_options("the open_clip adapter", {**T.stored_options(spec), **options}, OC_OPTIONS)
        target = target or (str(spec.extra.get("target", spec.id)) if spec else None)
        if not target:
            raise ValueError("open_clip needs a target: NAME/TAG, NAME//file, hf-hub:org/repo or "
                             "local-dir:/dir")
        self.target = target
        self.fusion, self.alpha = parse_fusion(opts.get("fusion"), opts.get("alpha"))
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        allow_pickle = as_bool(opts.get("allow_pickle", False), "allow_pickle")
        self.revision: str | None = None
        self.commit: str | None = None
        self.weights: dict[str, Any] = {}
        pretrained: str | None = None
        force_quick_gelu = False

        if target.startswith("hf-hub:"):
            repo = target[len("hf-hub:"):]
            self.revision = T.opt_str(opts.get("revision", spec.revision if spec else None))
            local = self._snapshot(repo, self.revision, allow_pickle)
            self.commit = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else None
            model_name = f"local-dir:{local}"
            self._check_dir(local, allow_pickle, what=target)
            self.weights = {"revision": self.revision, "commit": self.commit}
        elif target.startswith("local-dir:"):
            local = Path(os.path.expanduser(target[len("local-dir:"):]))
            if not local.is_dir():
                raise FileNotFoundError(f"open_clip local-dir {str(local)!r} is not a directory")
            model_name = f"local-dir:{local}"
            ckpt = self._check_dir(local, allow_pickle, what=target)
            self.weights = {"local_digest": T.local_digest(ckpt if ckpt is not None else local)}
        else:
            model_name, _, pre = target.partition("/")
            pretrained = T.opt_str(opts.get("pretrained")) or T.opt_str(pre)
            if pretrained is None:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise ValueError(f"open_clip target {target!r} names no weights; use NAME/TAG (tags: {tags}) "
                                 "or NAME//file.safetensors")
            file = Path(os.path.expanduser(pretrained))
            if file.is_file():
                _refuse_pickle(f"open_clip weights {pretrained!r}", file, allow_pickle)
                pretrained = str(file)
                self.weights = {"local_digest": T.local_digest(file)}
            else:
                cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
                if not cfg:
                    tags = open_clip.list_pretrained_tags_by_model(model_name)
                    raise ValueError(f"{pretrained!r} is neither a file nor a pretrained tag of "
                                     f"{model_name!r}; tags: {tags}")
                from open_clip.pretrained import download_pretrained

                path = download_pretrained(cfg)  # cached; open_clip re-resolves the same file below
                _refuse_pickle(f"open_clip tag {model_name}/{pretrained}", path, allow_pickle)
                arch = open_clip.get_model_config(model_name) or {}
                force_quick_gelu = bool(cfg.get("quick_gelu", False)) and not arch.get("quick_gelu", False)
                self.weights = {"tag": pretrained, "file": os.path.basename(path), "revision": None}
        if opts.get("quick_gelu") is not None:
            force_quick_gelu = as_bool(opts["quick_gelu"], "quick_gelu")
        self.quick_gelu = force_quick_gelu

        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, precision=PRECISION[self.dtype], device=self.device,
            force_quick_gelu=force_quick_gelu, weights_only=True, require_pretrained=True)
        self.model = model.eval()
        self.preprocess_fn = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self._in_dtype = _input_dtype(self.model.visual)
        self.model_name = model_name
        self._set_decode(opts.get("decode"))

        base = spec or ModelSpec(name=f"{self.family}:{target}", id=target, license="unknown",
                                 description=f"open_clip model {target}")
        self.spec = dataclasses.replace(
            base, name=self._spec_name(base.name), revision=self.revision,
            dim=base.dim or _embed_dim(model), modalities=fusion_modalities(self.fusion), dtype=self.dtype,
            extra={**dict(base.extra), "family": self.family, "fusion": self.fusion, "alpha": self.alpha,
                   "decode": self.decode})

    @staticmethod
    def _snapshot(repo: str, revision: str | None, allow_pickle: bool) -> Path:
        """Fetch only config, safetensors weights and tokenizer files of an hf-hub repo at `revision`."""
        from huggingface_hub import snapshot_download

        patterns = SAFE_HUB_FILES + (["open_clip_pytorch_model.bin"] if allow_pickle else [])
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))

    @staticmethod
    def _check_dir(path: Path, allow_pickle: bool, *, what: str) -> Path | None:
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{what}: no open_clip_config.json in {path}")
        ckpt = _dir_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"{what}: no weights in {path} (open_clip_model.safetensors expected)")
        _refuse_pickle(what, ckpt, allow_pickle)
        return ckpt

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "target": self.target, **self.weights,
                "dtype": self.dtype, "quick_gelu": self.quick_gelu, "fusion": self.fusion,
                "alpha": self.alpha,
                "preprocess": T.state_hash(repr(self.preprocess_fn)), **self._decode_fingerprint(),
                "tokenizer": {"class": type(self.tokenizer).__name__,
                              "context_length": getattr(self.tokenizer, "context_length", None)}}

    def _prepare(self, image: Any) -> torch.Tensor:
        return self.preprocess_fn(image)

    def _pixel_spec(self) -> I.PixelSpec:
        """open_clip's inference transform (transform.image_transform) from the model's preprocess_cfg."""
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # its defaults

        cfg = dict(getattr(self.model.visual, "preprocess_cfg", None) or {})
        size = cfg.get("size", 224)
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        mode = cfg.get("resize_mode") or "shortest"
        if not (mode == "squash" or (mode == "shortest" and h == w)):
            raise ValueError(f"decode=torchvision reproduces open_clip's resize_mode 'shortest' (square) and "
                             f"'squash'; {self.target} has {mode!r} at {(h, w)}: use decode=pil")
        # as open_clip: 'bilinear' is bilinear, anything else ('bicubic', 'random') bicubic at inference
        interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        mean = I.per_channel(cfg.get("mean") or OPENAI_DATASET_MEAN)
        std = I.per_channel(cfg.get("std") or OPENAI_DATASET_STD)
        return I.PixelSpec(resize="exact" if mode == "squash" else "shortest", size=(h, w),
                           crop=None if mode == "squash" else (h, w), crop_round=True,
                           interpolation=interpolation, mean=mean, std=std)

    def _image_features(self, prepared: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        import torch

        x = prepared if isinstance(prepared, torch.Tensor) else I.to_device(torch.stack(list(prepared)),
                                                                             self.device)
        return self.model.encode_image(x.to(self._in_dtype))

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens)


def _input_dtype(visual: Any) -> torch.dtype:
    """The dtype the image tower's first conv/linear layer expects (fp16/bf16 casts only those layers)."""
    import torch

    for m in visual.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            return m.weight.dtype
    return next(visual.parameters()).dtype


def _embed_dim(model: Any) -> int | None:
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        return int(proj.shape[-1])
    return getattr(getattr(model, "visual", None), "output_dim", None)


def _oc(spec: ModelSpec | None, target: str | None, **options: Any) -> OpenCLIPEncoder:
    return OpenCLIPEncoder(spec, target=target, **options)


def _laion(name: str, repo: str, revision: str, dim: int, parameters: int) -> ModelSpec:
    return ModelSpec(name=name, id=repo, revision=revision, dim=dim,
                     modalities=("image", "text", "image+text"), license="MIT", parameters=parameters,
                     description=f"open_clip {repo} (LAION-2B), loaded with hf-hub: at a pinned revision (as "
                                 "in mteb's registry); needs open_clip_model.safetensors at that revision.",
                     extra={"family": "open_clip", "target": f"hf-hub:{repo}"})


ALIASES = [
    _laion("openclip-b32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
           "08f73555f1b2fb7c82058aebbd492887a94968ef", 512, 151_000_000),
    _laion("openclip-l14", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
           "1627032197142fbe2a7cfec626f4ced3ae60d07a", 768, 428_000_000),
    _laion("openclip-h14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
           "de081ac0a0ca8dc9d1533eed1ae884bb8ae1404b", 1024, 986_000_000),
    _laion("openclip-bigg14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
           "bc7788f151930d91b58474715fdce5524ad9a189", 1280, 2_540_000_000),
]
for _spec in ALIASES:
    register_model(_spec, _oc, options=OC_OPTIONS)
register_family("open_clip", _oc, options=OC_OPTIONS)
