"""GME (Alibaba-NLP/gme-Qwen2-VL-2B/7B-Instruct): one Qwen2-VL pass embeds image, text or both.

Implemented here on plain transformers (`Qwen2VLModel` + tokenizer + image processor), so no remote code
runs and newer transformers versions do not break it (the hub's gme_inference.py breaks from 4.52 on).
The conventions follow the model card's gme_inference.py (HF `GmeQwen2VL`):

- prompt: `<|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{image}{text}<|im_end|>\\n`
  `<|im_start|>assistant\\n<|endoftext|>`, where `{image}` is `<|vision_start|><|image_pad|><|vision_end|>`
  (expanded to one pad per merged patch) and the instruction is the system turn;
- documents always use the default instruction "You are a helpful assistant." (`is_query=False`); queries
  use the task's instruction, or that default when there is none;
- images are first resized by qwen_vl_utils' `smart_resize` (sides multiples of 28, 4·28² to 16384·28²
  pixels), then by the image processor within [min_image_tokens, max_image_tokens] · 28² pixels
  (defaults 256 and 1280 tokens, as in gme_inference.py, which passes them as `min_pixels` / `max_pixels`:
  the form both transformers 4 and 5 honour; transformers 5 lets a checkpoint's saved `min_pixels`
  override a `size=` argument). The budget is read back from the loaded processor, checked, and recorded;
- image preprocessing on PIL + numpy (`image_backend="pil"`, what transformers 4 runs for this processor
  and so what gme_inference.py ran); `image_backend="torchvision"` is transformers 5's default;
- right padding, truncation at max_length=1800 tokens, and the embedding is the last token's final hidden
  state (the appended `<|endoftext|>`), L2-normalised;
- instructions: the GME authors' own per-task ones (their MIEB/mteb contribution, `TASKNAME2INSTRUCTIONS`):
  CIRR "Retrieve a day-to-day image that aligns with the modification instructions of the provided image.",
  FashionIQ "Find a fashion image that aligns with the reference image and style note." (M-BEIR's wording);
- positions: gme_inference.py calls the decoder with `position_ids=None`, which gives plain sequential
  positions (not Qwen2-VL's 3-D M-RoPE); `position_ids="sequential"` (default) reproduces that, and
  `position_ids="mrope"` uses the 3-D positions of `Qwen2VLForConditionalGeneration` instead;
- dtype: float16 on GPU as in gme_inference.py; float32 on CPU, where half-precision kernels are slow or
  missing (either is overridable and recorded in the fingerprint).

Other harnesses differ (VLM2Vec: bf16, flash-attention-2, left padding; MTEB: min_image_tokens=4), so every
one of these knobs is an option and part of `fingerprint()`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_int
from cirbench.core.types import Role
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import register_family, register_model

if TYPE_CHECKING:
    import torch

DEFAULT_INSTRUCTION = "You are a helpful assistant."
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
ADAPTER_VERSION = "1"

# qwen_vl_utils' pre-resize, which gme_inference.py applies before the processor (fetch_image)
IMAGE_FACTOR = 28
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200

PIXEL_OPTIONS: OptionTable = (
    Option("min_image_tokens", "int", "fewest visual tokens per image (28x28-pixel units)", low=1),
    Option("max_image_tokens", "int", "most visual tokens per image (28x28-pixel units)", low=1),
    Option("min_pixels", "int", "fewest pixels per image (overrides min_image_tokens)", low=1),
    Option("max_pixels", "int", "most pixels per image (overrides max_image_tokens)", low=1),
)
POSITION_IDS = Option("position_ids", "choice", "decoder positions: sequential (the released inference code) "
                      "or mrope (Qwen2-VL's 3-D positions)", "sequential", ("sequential", "mrope"))
GME_OPTIONS: OptionTable = (
    *T.LOADING, T.ATTN_IMPLEMENTATION, T.IMAGE_BACKEND, *PIXEL_OPTIONS, POSITION_IDS,
    Option("max_length", "int", "tokens per input", 1800, low=1),
    Option("instruct_documents", "bool", "give gallery items the instruction too", False),
)

# The GME authors' instructions (izhx's MIEB contribution to mteb, mteb/models/instructions.py, Jan 2025):
# M-BEIR's first instruction per task; the FashionIQ one differs from the MMEB wording cirbench's task uses.
GME_CIRR = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."
GME_FIQ = "Find a fashion image that aligns with the reference image and style note."
GME_INSTRUCTIONS = {"document": DEFAULT_INSTRUCTION, "cirr:query": GME_CIRR, "fashioniq:query": GME_FIQ}


def prompt(instruction: str, text: str | None, has_image: bool) -> str:
    """The exact string gme_inference.py builds for one input (image slot not yet expanded)."""
    user = (IMAGE_SLOT if has_image else "") + (text if text is not None else "")
    return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>")


def pixel_budget(improc: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) a loaded Qwen2-VL image processor will resize to, in either transformers
    layout (5.x and late 4.x: `size` edges; early 4.x: `min_pixels` / `max_pixels` attributes)."""
    size = getattr(improc, "size", None)

    def get(key: str) -> Any:
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    lo = get("shortest_edge") or get("min_pixels") or getattr(improc, "min_pixels", None)
    hi = get("longest_edge") or get("max_pixels") or getattr(improc, "max_pixels", None)
    if lo is None or hi is None:
        raise ValueError(f"cannot read the pixel budget of {type(improc).__name__}")
    return int(lo), int(hi)


def load_image_processor(source: str, kw: dict[str, Any], backend: str,
                         budget: tuple[int, int] | None = None) -> Any:
    """The checkpoint's Qwen2-VL image processor on `backend`, resizing within `budget` (min, max pixels).

    The budget goes in as `min_pixels` / `max_pixels`, which override the saved config on transformers 4 and
    5 alike (a `size=` argument loses to a saved `min_pixels` on 5, and is reset on some 4.x), and is read
    back: a processor that would resize to anything else is an error, not a silently different vector.
    """
    from transformers import AutoImageProcessor

    extra = {"min_pixels": budget[0], "max_pixels": budget[1]} if budget else {}
    improc = AutoImageProcessor.from_pretrained(source, **T.backend_kwargs(backend), **extra, **kw)
    T.check_image_backend(improc, backend, source)
    if budget is not None and pixel_budget(improc) != tuple(budget):
        raise ValueError(f"{source}: asked the image processor for {budget[0]}..{budget[1]} pixels, but "
                         f"{type(improc).__name__} on transformers {T.transformers_version()} would use "
                         f"{pixel_budget(improc)}")
    return improc


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = FETCH_MIN_PIXELS,
                 max_pixels: int = FETCH_MAX_PIXELS) -> tuple[int, int]:
    """qwen_vl_utils.smart_resize: sides divisible by `factor`, area within [min, max], aspect kept."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if max(h_bar, w_bar) / min(h_bar, w_bar) > MAX_RATIO:
        if h_bar > w_bar:
            h_bar = w_bar * MAX_RATIO
        else:
            w_bar = h_bar * MAX_RATIO
    return h_bar, w_bar


class GMEEncoder:
    """GME-style embeddings from a Qwen2-VL checkpoint (`gme`, `gme-7b`, or `gme:<hub id or dir>`)."""

    family = "gme"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoTokenizer, Qwen2VLModel

        opts, source, self.revision = T.adapter_target("gme", spec, model_id, options, GME_OPTIONS)
        self.source = source
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float16" if self.device.startswith("cuda") else
                                       "float32")
        self.attn_implementation = T.opt_str(opts.get("attn_implementation"))
        self.max_length = as_int(opts.get("max_length", 1800), "max_length")
        self.position_ids = str(opts.get("position_ids", "sequential")).lower()
        if self.position_ids not in ("sequential", "mrope"):
            raise ValueError(f"position_ids must be 'sequential' (gme_inference.py) or 'mrope', "
                             f"not {self.position_ids!r}")
        self.instruct_documents = as_bool(opts.get("instruct_documents", False), "instruct_documents")
        self.image_backend = T.parse_image_backend(opts.get("image_backend"))
        trc, allow_pickle = T.safety_options(opts)

        T.checked_config(source, self.revision, trust_remote_code=trc, model_type="qwen2_vl",
                         needs="the gme adapter implements GME on Qwen2-VL")
        T.check_local_weights(source, allow_pickle=allow_pickle)  # refuse pickles before loading anything
        kw = T.hf_kwargs(self.revision, trc)
        with T.quiet_transformers():
            saved = load_image_processor(source, kw, self.image_backend)
            self.factor = int(saved.patch_size) * int(saved.merge_size)
            budget = self._pixel_budget(opts, self.factor)
            self.image_processor = load_image_processor(source, kw, self.image_backend, budget)
            self.min_pixels, self.max_pixels = pixel_budget(self.image_processor)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        model, self.weights = T.load_pretrained(
            Qwen2VLModel, source, revision=self.revision, dtype=self.dtype, trust_remote_code=trc,
            allow_pickle=allow_pickle, attn_implementation=self.attn_implementation)
        self.tokenizer.padding_side = "right"
        self.model = model.to(self.device).eval()
        self.image_token_id = int(model.config.image_token_id)
        if self.tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(f"{source}: the tokenizer's {IMAGE_PAD} id does not match config.image_token_id")
        dim = int(model.config.text_config.hidden_size)

        base = spec or ModelSpec(name=f"{self.family}:{source}", id=source, license="unknown",
                                 default_instructions=GME_INSTRUCTIONS,
                                 description=f"GME-style Qwen2-VL embeddings from {source}")
        self.spec = dataclasses.replace(base, revision=self.revision, dim=base.dim or dim, dtype=self.dtype,
                                        modalities=("image", "text", "image+text"),
                                        extra={**dict(base.extra), "family": self.family})

    @staticmethod
    def _pixel_budget(opts: dict[str, Any], factor: int) -> tuple[int, int]:
        """min/max pixels from *_pixels if given, else from *_image_tokens (one token per factor² pixels)."""
        unit = factor * factor
        lo = (as_int(opts["min_pixels"], "min_pixels") if opts.get("min_pixels") is not None
              else as_int(opts.get("min_image_tokens", 256), "min_image_tokens") * unit)
        hi = (as_int(opts["max_pixels"], "max_pixels") if opts.get("max_pixels") is not None
              else as_int(opts.get("max_image_tokens", 1280), "max_image_tokens") * unit)
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {lo} and {hi}")
        return lo, hi

    def fingerprint(self) -> dict[str, Any]:
        """`min_pixels` / `max_pixels` are the budget read back from the loaded processor (what is used)."""
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source,
                **self.weights, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels, "pre_resize": "qwen_vl_utils.fetch_image",
                "max_length": self.max_length, "position_ids": self.position_ids,
                "instruct_documents": self.instruct_documents, "padding": "right", "pooling": "last-token",
                "image_backend": self.image_backend, "runtime": T.runtime(),
                "image_processor": T.processor_config(self.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)}}

    def preprocess(self, image: Any) -> dict[str, Any]:
        """gme_inference.py's fetch_image resize, then the image processor (runs in worker threads)."""
        img = image.convert("RGB")
        w, h = img.size
        rh, rw = smart_resize(h, w)
        img = img.resize((rw, rh))
        out = self.image_processor(images=[img], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def instruction_for(self, role: Role, instruction: str | None) -> str:
        """GME's rule: documents get the default instruction; queries the task's (or the default)."""
        if role == "document" and not self.instruct_documents:
            return DEFAULT_INSTRUCTION
        return instruction or DEFAULT_INSTRUCTION

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        import torch
        from PIL import Image

        inst = self.instruction_for(role, instruction)
        texts: list[str] = []
        pixel_values: list[torch.Tensor] = []
        grids: list[torch.Tensor] = []
        merge = int(self.image_processor.merge_size) ** 2
        for it, img in zip(batch.items, batch.images, strict=True):
            T.check_item(it, img)
            p = prompt(inst, it.text, it.image is not None)
            if it.image is not None:
                pre: Any = self.preprocess(img) if isinstance(img, Image.Image) else img
                pixel_values.append(pre["pixel_values"])
                grids.append(pre["image_grid_thw"])
                n_tokens = int(pre["image_grid_thw"].prod()) // merge
                p = p.replace(IMAGE_PAD, IMAGE_PAD * n_tokens, 1)
            texts.append(p)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        input_ids = tok["input_ids"].to(self.device)
        attention_mask = tok["attention_mask"].to(self.device)
        n_img_tokens = int((input_ids == self.image_token_id).sum())
        expected = sum(int(g.prod()) // merge for g in grids)
        if n_img_tokens != expected:
            raise ValueError(f"an input was truncated inside its image tokens ({n_img_tokens} of {expected} "
                             f"kept at max_length={self.max_length}); raise max_length or lower "
                             "max_image_tokens")
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values).to(self.device)
            inputs["image_grid_thw"] = torch.cat(grids).to(self.device)
        if self.position_ids == "sequential":
            b, n = input_ids.shape
            inputs["position_ids"] = torch.arange(n, device=self.device).view(1, 1, n).expand(3, b, n)
        else:
            inputs["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            last = attention_mask.sum(dim=1) - 1  # right padding: the appended <|endoftext|>
            emb = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return T.to_numpy_f32(emb)


def _gme(spec: ModelSpec | None, target: str | None, **options: Any) -> GMEEncoder:
    return GMEEncoder(spec, model_id=target, **options)


GME_2B = ModelSpec(
    name="gme", id="Alibaba-NLP/gme-Qwen2-VL-2B-Instruct",
    revision="ce765ae71b8cdb208203cd8fb64a170b1b84293a",
    dim=1536, modalities=("image", "text", "image+text"), license="Apache-2.0", parameters=2_210_000_000,
    dtype="float16", default_instructions=GME_INSTRUCTIONS,
    description="GME-Qwen2-VL-2B: fused image+text queries in one Qwen2-VL pass, instruction as system "
                "turn (the GME authors' per-task instructions), last-token pooling; conventions of the "
                "card's gme_inference.py, reimplemented without remote code. Revision pinned as in mteb's "
                "registry. float16 on GPU, float32 on CPU by default.",
    extra={"family": "gme"})
GME_7B = dataclasses.replace(
    GME_2B, name="gme-7b", id="Alibaba-NLP/gme-Qwen2-VL-7B-Instruct",
    revision="477027a6480f8630363be77751f169cc3434b673", dim=3584, parameters=8_290_000_000,
    description=GME_2B.description.replace("2B", "7B"))

register_model(GME_2B, _gme, options=GME_OPTIONS)
register_model(GME_7B, _gme, options=GME_OPTIONS)
register_family("gme", _gme, options=GME_OPTIONS)
