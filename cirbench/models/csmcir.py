"""CSMCIR (arXiv 2601.03728): a symmetric BLIP-2 Q-Former over (image, text) on both sides (`csmcir:<ckpt>`).

The released FashionIQ checkpoint (HF `peng12138/CSMCIR`, `fashioniq_tuned_clip_best.pt`) is a LAVIS fork
model, `blip2_cir_align_prompt_csmcir`, derived from SPRC's `blip2_cir_align_prompt`. CSMCIR's own code
(qzp2018/CSMCIR) could not be read here, so this adapter is SPRC's inference (chunmeifeng/SPRC
`src/lavis/models/blip2_models/blip2_qformer_cir_align_prompt.py::inference`, `src/blip_fine_tune_2.py`,
`src/data_utils.py`) with CSMCIR's one documented change, the target tower:

- query (reference image + modification text): the Q-Former's fusion pass (query tokens + text, cross-
  attending to the image), then a second pass over [fused query tokens; text] with no cross-attention
  (SPRC's Q-Former runs every position through the text feed-forward then), `text_proj` of the text's
  [CLS] output (position 32), L2-normalised;
- target (gallery image + its chain-of-thought caption): the same two passes over (image, caption), per the
  paper's abstract ("a shared-parameter Q-Former encodes both the query and the target") [inference: the
  exact target pooling is unverified; SPRC's own target is the max over 32 image-token features, which a
  symmetric tower replaces];
- score: the dot product of the two unit vectors.

Gallery captions are an input artifact, imported read-only with provenance (`captions=` a folder holding
`{dress,shirt,toptee}_cot_val.json`, or one JSON file; `captions_provenance=` where it was released, e.g.
`peng12138/CSMCIR@cf0c19bb fashioniq_qwen_captions/qwen_captions`). Accepted format: a JSON object
{image id (the FashionIQ ASIN): caption text}, or, with `captions_id_field` and `captions_value_field`, a
list of records; anything else is refused naming the file and record. The released files' inner format is
not verified here. Each file's SHA-256 and the provenance go into the fingerprint and the protocol notes.

Inputs as SPRC's FashionIQ run: `targetpad` preprocessing (pad to aspect ratio 1.25 with black, resize the
shorter side to 224 bicubic, centre crop, CLIP mean/std: `--transform targetpad --target-ratio 1.25`);
texts through LAVIS's `blip_caption` eval processor (`pre_caption`, 50 words) and the tokenizer with
`max_length=32` (`max_txt_len`). SPRC joins FashionIQ's captions as "C1 and c2" after stripping '.?, '
(CLIP4Cir's validation), which the uncased tokenizer reads as the FashionIQ task's `c1-and-c2` join; its
gallery is the category's val split with the reference eligible, the task's `category-val` (the
default): run `--task fashioniq --protocol category-val+c1-and-c2`.

Checkpoint: what SPRC's `save_model` writes (CLIP4Cir's), `{'epoch': n, '<model class name>': state_dict}`,
read with `torch.load(weights_only=True)`, or a safetensors file of the state dict. Keys: LAVIS's
`Blip2Qformer` layout (cirbench.models._lavis_blip2), plus SPRC's `prompt_tokens` (training only). Any
other key (a CSMCIR-only module) is refused, naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import as_int
from cirbench.core.types import DatasetError, Role
from cirbench.models import _checkpoints as C
from cirbench.models import _lavis_blip2 as L
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.blip2 import pre_caption
from cirbench.models.registry import register_family

if TYPE_CHECKING:
    import torch

    from cirbench.core.types import Task

ADAPTER_VERSION = "1"
CHECKPOINT_NAMES = ("fashioniq_tuned_clip_best.pt", "tuned_clip_best.pt", "model.safetensors")
CAPTION_FILES = tuple(f"{c}_cot_val.json" for c in ("dress", "shirt", "toptee"))
CSMCIR_OPTIONS = ("backbone", "revision", "device", "dtype", "max_length", "max_words", "target_ratio",
                  "captions", "captions_provenance", "captions_id_field", "captions_value_field")
SPRC_EXTRA = ("prompt_tokens",)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOWERS = ("query: Q-Former fusion pass (query tokens + text, cross-attention to the image), second pass "
          "without cross-attention, text_proj of position num_query_tokens, L2; target: the same over "
          "(gallery image, CoT caption); score: dot product")


def target_pad(image: Any, ratio: float) -> Any:
    """CLIP4Cir's TargetPad: pad an image more elongated than `ratio` towards it, black, centred."""
    from PIL import Image

    w, h = image.size
    if max(w, h) / min(w, h) < ratio:
        return image
    side = max(w, h) / ratio
    hp, vp = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
    out = Image.new(image.mode, (w + 2 * hp, h + 2 * vp), 0)
    out.paste(image, (hp, vp))
    return out


def load_captions(path: str, provenance: str | None, id_field: str | None, value_field: str | None
                  ) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(image id -> caption, one provenance record per file) from a CoT file or a folder of them."""
    from cirbench.retrieval.methods.artifacts import ImportedArtifacts

    if not provenance:
        raise ValueError("captions= needs captions_provenance= (where the captions were released, e.g. "
                         "'peng12138/CSMCIR@<revision> fashioniq_qwen_captions/qwen_captions')")
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        files = [(p, name) for name in CAPTION_FILES if (p / name).is_file()]
        if not files:
            raise DatasetError(f"no CoT caption file ({', '.join(CAPTION_FILES)}) in this folder", file=p)
    elif p.is_file():
        files = [(p.parent, p.name)]
    else:
        raise DatasetError("no such CoT caption file or folder", file=p)
    captions: dict[str, str] = {}
    where: dict[str, Path] = {}
    records = []
    for root, name in files:
        art = ImportedArtifacts.load(root, name, provenance=provenance, id_field=id_field,
                                     value_field=value_field)
        for key, value in art.values.items():
            if not isinstance(value, str) or not value.strip():
                raise DatasetError("a CoT caption must be a non-empty text", file=art.path, record=key,
                                   field=value_field)
            if key in captions and captions[key] != value:
                raise DatasetError(f"image {key!r} has another caption in {where[key]}", file=art.path,
                                   record=key)
            captions[key], where[key] = value, art.path
        records.append(art.record())
    return captions, records


def _state(obj: Any, path: Path) -> tuple[dict[str, Any], str | None]:
    """(state dict, model class name): SPRC's {'epoch', <class name>: state} or a bare state dict."""
    import torch

    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return C.state_dict_of(obj, path), None
    if isinstance(obj, Mapping):
        names = [k for k, v in obj.items() if isinstance(v, Mapping) and v
                 and all(isinstance(t, torch.Tensor) for t in v.values())]
        if len(names) == 1:
            return C.state_dict_of(obj, path, names[0]), str(names[0])
        top = sorted(map(str, obj))[:8]
        raise C.CheckpointError(f"{path}: expected SPRC's {{'epoch', '<model class>': state_dict}} with one "
                                f"state dict; found {len(names)} among {top}")
    raise C.CheckpointError(f"{path}: does not hold a state dict (name -> tensor)")


class CsmcirEncoder:
    """CSMCIR's symmetric towers on transformers' BLIP-2 (see the module docstring)."""

    family = "csmcir"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoTokenizer

        opts = {**dict((spec.extra.get("options") or {}) if spec else {}), **options}
        T.check_options("csmcir adapter", opts, CSMCIR_OPTIONS)
        target = model_id or (spec.id if spec else None)
        if not target:
            raise ValueError("csmcir needs a checkpoint file (fashioniq_tuned_clip_best.pt) or a directory")
        self.path = C.find_checkpoint(target, CHECKPOINT_NAMES, "CSMCIR")
        self.backbone = str(opts.get("backbone") or L.BACKBONE)
        self.revision = None if T.is_local(self.backbone) else T.opt_str(opts.get("revision"))
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        self.max_length = as_int(opts.get("max_length", 32), "max_length")
        self.max_words = as_int(opts.get("max_words", 50), "max_words")
        try:
            self.target_ratio = float(opts.get("target_ratio", 1.25))
        except (TypeError, ValueError):
            raise ValueError(f"target_ratio must be a number, not {opts.get('target_ratio')!r}") from None
        self.captions: dict[str, str] = {}
        self.caption_files: list[dict[str, Any]] = []
        if opts.get("captions"):
            self.captions, self.caption_files = load_captions(
                str(opts["captions"]), T.opt_str(opts.get("captions_provenance")),
                T.opt_str(opts.get("captions_id_field")), T.opt_str(opts.get("captions_value_field")))

        safetensors = self.path.name.endswith(".safetensors")
        state, self.model_class = _state(C.read_checkpoint(self.path), self.path)
        config = L.blip2_config(self.backbone, self.revision)
        model = L.load_lavis_blip2(self.path, state, config, "CSMCIR", ignore=SPRC_EXTRA)
        self.model = model.to(self.device, T.torch_dtype(self.dtype)).eval()
        with T.quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(self.backbone, **T.hf_kwargs(self.revision, False))
        self.tokenizer.padding_side = "right"
        self.n_query = int(config.num_query_tokens)
        self.image_size = int(config.vision_config.image_size)
        self.weights = {"checkpoint": str(self.path), "local_digest": T.local_digest(self.path),
                        "format": "safetensors" if safetensors else "torch.load(weights_only=True)",
                        "model_class": self.model_class,
                        "backbone": {"id": self.backbone,
                                     **T.weights_fingerprint(self.backbone, self.revision)}}
        dim = int(config.image_text_hidden_size)
        base = spec or ModelSpec(name=f"{self.family}:{target}", id=str(target), license="unknown",
                                 description=f"CSMCIR (SPRC-lineage BLIP-2) from {self.path}")
        self.spec = dataclasses.replace(base, dim=dim, dtype=self.dtype, modalities=("image", "image+text"),
                                        extra={**dict(base.extra), "family": self.family})

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", **self.weights, "dtype": self.dtype,
                "towers": TOWERS, "max_length": self.max_length, "max_words": self.max_words,
                "image_preprocessing": f"targetpad {self.target_ratio}, resize shorter side bicubic, centre "
                                       f"crop {self.image_size}, CLIP mean/std",
                "gallery_captions": self.caption_files,
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)},
                "runtime": T.runtime()}

    # ------------------------------------------------------------------ binding to a task
    def for_task(self, task: Task) -> tuple[CsmcirEncoder, Task]:
        """Each gallery item gets its imported CoT caption (`Item.caption`); the protocol records the file."""
        if not self.caption_files:
            raise ValueError("CSMCIR's target tower reads each gallery image's CoT caption: pass --option "
                             "captions=<folder of {dress,shirt,toptee}_cot_val.json> --option "
                             "captions_provenance=<where they were released>")
        corpus = []
        for it in task.corpus:
            if it.id not in self.captions:
                files = ", ".join(str(f["path"]) for f in self.caption_files)
                raise DatasetError(f"gallery image {it.id!r} has no CoT caption in {files}", record=it.id)
            corpus.append(dataclasses.replace(it, caption=self.captions[it.id]))
        files = "; ".join(f"{f['path']} sha256 {f['sha256']}" for f in self.caption_files)
        protocol = dataclasses.replace(task.protocol, notes={
            **dict(task.protocol.notes),
            "gallery_text": f"CSMCIR: each gallery image embedded with its imported CoT caption ({files}; "
                            f"provenance {self.caption_files[0]['provenance']})"})
        return copy.copy(self), dataclasses.replace(task, corpus=corpus, protocol=protocol)

    # ------------------------------------------------------------------ encoding
    def preprocess(self, image: Any) -> torch.Tensor:
        """SPRC's targetpad_transform: PIL image -> (1, 3, S, S) (worker threads)."""
        import torch
        from PIL import Image

        img = target_pad(image.convert("RGB"), self.target_ratio)
        w, h = img.size
        s = self.image_size
        size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)  # torchvision Resize(int)
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
        img = img.crop((left, top, left + s, top + s))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0)

    def fused(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """SPRC's `inference` fusion feature for (image, text) pairs: (n, dim), L2-normalised."""
        import torch

        img = L.vision(self.model, pixels.to(self.device))
        tok = self.tokenizer([pre_caption(t, self.max_words) for t in texts], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        q = self.model.query_tokens.expand(img.shape[0], -1, -1)
        fused = L.fused_pass(self.model, ids, mask, q, img)[:, : self.n_query]
        h = L.fused_pass(self.model, ids, mask, fused, None)[:, self.n_query]
        proj = self.model.text_projection
        return torch.nn.functional.normalize(proj(h.to(proj.weight.dtype)).float(), dim=-1)

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, dim) unit rows: composed queries, and gallery images with their CoT captions."""
        import torch
        from PIL import Image

        texts = []
        for it, img in zip(batch.items, batch.images, strict=True):
            T.check_item(it, img)
            if it.image is None:
                raise DatasetError("CSMCIR embeds an image with a text, not a text alone", record=it.id)
            text = it.text if role == "query" else it.caption
            if text is None:
                raise DatasetError("a CSMCIR query needs its modification text" if role == "query" else
                                   "a CSMCIR gallery image needs its CoT caption (Item.caption: run it "
                                   "through the eval flow with captions=)", record=it.id)
            texts.append(text)
        rows: list[Any] = [self.preprocess(img) if isinstance(img, Image.Image) else img
                           for img in batch.images]
        with torch.inference_mode():
            out = self.fused(torch.cat(rows).to(T.torch_dtype(self.dtype)), texts)
        return T.to_numpy_f32(out)


def _family(target: str, **options: Any) -> CsmcirEncoder:
    return CsmcirEncoder(None, model_id=target, **options)


register_family("csmcir", _family)
