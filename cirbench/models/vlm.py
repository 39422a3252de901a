"""Qwen2-VL embedders besides GME: RzenEmbed (`rzenembed`, `rzen:`) and VLM2Vec-V2 (`vlm2vec-v2`, `vlm2vec:`).

Both are Qwen2-VL checkpoints pooled at the last token and L2-normalised; they differ in where the
instruction goes, the prompt around it, the padding and the positions. (E5-V, on LLaVA-NeXT, is in e5v.py.)

RzenEmbed (360CVGroup/RzenEmbed `rzen_embed_inference.py`): GME's conventions (the GME adapter's code runs
it: chat template, `<|endoftext|>` appended, right padding, sequential positions, qwen_vl_utils pre-resize,
256..1280 image tokens), except that the system turn is always "You are a helpful assistant." and the
instruction is glued in front of the user text (`instruction + text`, or the instruction alone for an image)
on *both* sides: queries and gallery images are both instructed. max_length 2000 and bfloat16 on GPU, as in
that file.

VLM2Vec-V2 (TIGER-AI-Lab/VLM2Vec, MMEB-V2 eval, parser `image_i2i_vg`): no chat template. The text is
`<|image_pad|>\\n{instruction} {text}\\n` for a composed query and `<|image_pad|>\\n{instruction}` for a
gallery image (the image token bare, without vision start/end markers, expanded to one per merged patch),
left padding, the last position's final hidden state, M-RoPE positions computed from the attention mask
(so a vector never depends on what else is in its batch). `prompt_style="mteb"` uses mteb's VLM2VEC2Wrapper
format instead (`<|image_pad|> {instruction} {text}`). Images go to the checkpoint's image processor as they
are (no qwen_vl_utils pre-resize); `max_image_tokens` / `max_pixels` cap them (mteb uses 360*420 pixels).
The released VLM2Vec-V2.0 is a (Do)LoRA adapter on Qwen2-VL-2B-Instruct: a source holding
`adapter_config.json` is loaded with `peft` (an optional dependency) on its base model and merged; a source
holding a full Qwen2-VL checkpoint loads directly.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.gme import DEFAULT_INSTRUCTION, IMAGE_PAD, GMEEncoder, _pixel_kwargs
from cirbench.models.registry import register_family, register_model
from cirbench.types import Item, Role

if TYPE_CHECKING:
    import torch

ADAPTER_VERSION = "1"

# MMEB's instructions (VLM2Vec/MMEB eval data, CIRR and FashionIQ); RzenEmbed was evaluated on MMEB with them.
MMEB_CIRR = "Given an image, find a similar everyday image with the described changes:"
MMEB_FIQ = "Find an image to match the fashion image and style note:"
MMEB_IMAGE = "Represent the given image."


# ============================================================================= RzenEmbed
def rzen_text(instruction: str | None, text: str | None) -> str | None:
    """RzenEmbed's `get_fused_embeddings`: `instruction + text`, the instruction alone for an image."""
    if not instruction:
        return text
    return instruction + text if text is not None else instruction


class RzenEmbedEncoder(GMEEncoder):
    """RzenEmbed: GME's Qwen2-VL recipe with the instruction in the user turn, on both sides."""

    family = "rzen"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        if "instruct_documents" in options:
            raise TypeError("rzen adapter: instruct_documents does not apply (RzenEmbed instructs both "
                            "sides)")
        opts = dict(options)
        opts.setdefault("max_length", 2000)
        if "dtype" not in opts and T.resolve_device(opts.get("device")).startswith("cuda"):
            opts["dtype"] = "bfloat16"  # rzen_embed_inference.py loads bfloat16
        super().__init__(spec, model_id=model_id, **opts)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp.pop("instruct_documents", None)
        return {**fp, "adapter": f"{self.family}/{ADAPTER_VERSION}", "system": DEFAULT_INSTRUCTION,
                "instruction": "prefix of the user text, both sides"}

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        items = [dataclasses.replace(it, text=rzen_text(instruction, it.text)) for it in batch.items]
        return super().encode(Batch(items, batch.images), role="query", instruction=DEFAULT_INSTRUCTION)


# ============================================================================= VLM2Vec-V2
VLM2VEC_OPTIONS = ("revision", "base_model", "base_revision", "device", "dtype", "attn_implementation",
                   "min_image_tokens", "max_image_tokens", "min_pixels", "max_pixels", "max_length",
                   "prompt_style", "document_newline", "trust_remote_code", "allow_pickle")
PROMPT_STYLES = ("vlm2vec", "mteb")


def vlm2vec_prompt(instruction: str | None, text: str | None, has_image: bool, *, style: str = "vlm2vec",
                   newline: bool = False) -> str:
    """The string VLM2Vec's MMEB-V2 parser (or mteb's wrapper) builds; IMAGE_PAD not yet expanded."""
    inst = (instruction or "").strip()
    if style == "mteb":
        return " ".join(p for p in (IMAGE_PAD if has_image else "", inst, text or "") if p)
    body = f"{inst} {text}" if inst and text else (inst or text or "")
    if has_image:
        body = f"{IMAGE_PAD}\n{body}" if body else IMAGE_PAD
    return body + ("\n" if newline else "")


def _hub_file(source: str, filename: str, revision: str | None) -> str | None:
    """Path of `filename` in a local dir or (cached) hub repo, or None where the repo has no such file."""
    from transformers.utils import cached_file

    try:
        return cached_file(source, filename, revision=revision, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError:
        return None


class VLM2VecEncoder:
    """VLM2Vec-V2 embeddings from a Qwen2-VL checkpoint or a peft adapter on one (see module docstring)."""

    family = "vlm2vec"
    base: str | None = None
    """The base model a peft adapter was merged into (None for a full checkpoint)."""
    base_revision: str | None = None

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        opts, source, self.revision = T.adapter_target("vlm2vec", spec, model_id, options, VLM2VEC_OPTIONS)
        self.source = source
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "bfloat16" if self.device.startswith("cuda") else
                                       "float32")
        self.attn_implementation = T.opt_str(opts.get("attn_implementation"))
        self.max_length = T.opt_int(opts.get("max_length", 8192), "max_length")
        self.prompt_style = str(opts.get("prompt_style", "vlm2vec")).lower()
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {list(PROMPT_STYLES)}, not {self.prompt_style!r}")
        self.document_newline = T.opt_bool(opts.get("document_newline", False), "document_newline")
        self.trc, self.allow_pickle = T.safety_options(opts)

        adapter_cfg = _hub_file(source, "adapter_config.json", self.revision)
        if adapter_cfg:
            model, tok_source, tok_rev = self._load_adapter(adapter_cfg, opts)
        else:
            model = self._load_full(source, self.revision)
            tok_source, tok_rev = source, self.revision
        self.model = model.to(self.device).eval()
        self._load_processors(tok_source, tok_rev, opts)
        self.image_token_id = int(model.config.image_token_id)
        if self.tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(f"{source}: the tokenizer's {IMAGE_PAD} id does not match config.image_token_id")
        dim = int(model.config.text_config.hidden_size)
        base = spec or ModelSpec(name=f"{self.family}:{source}", id=source, license="unknown",
                                 default_instructions=VLM2VEC_INSTRUCTIONS,
                                 description=f"VLM2Vec-V2-style Qwen2-VL embeddings from {source}")
        self.spec = dataclasses.replace(base, revision=self.revision, dim=base.dim or dim, dtype=self.dtype,
                                        modalities=("image", "text", "image+text"),
                                        extra={**dict(base.extra), "family": self.family})

    # ------------------------------------------------------------------ loading
    def _from_pretrained(self, cls: Any, source: str, revision: str | None) -> tuple[Any, dict[str, Any]]:
        """(model, weights fingerprint) of a Qwen2-VL checkpoint: a full model, or an adapter's base."""
        T.checked_config(source, revision, trust_remote_code=self.trc, model_type="qwen2_vl",
                         needs="the vlm2vec adapter implements VLM2Vec-V2 on Qwen2-VL")
        return T.load_pretrained(cls, source, revision=revision, dtype=self.dtype, trust_remote_code=self.trc,
                                 allow_pickle=self.allow_pickle, attn_implementation=self.attn_implementation)

    def _load_full(self, source: str, revision: str | None) -> Any:
        from transformers import Qwen2VLModel

        model, self.weights = self._from_pretrained(Qwen2VLModel, source, revision)
        return model

    def _load_adapter(self, adapter_cfg: str, opts: dict[str, Any]) -> tuple[Any, str, str | None]:
        """Base model + peft adapter, merged (what VLM2Vec's MMEBModel.load and mteb's wrapper do)."""
        try:
            from peft import PeftModel
        except ImportError as e:
            raise ImportError(f"{self.source} is a peft adapter (adapter_config.json); loading it needs the "
                              "`peft` package: pip install peft") from e
        from transformers import Qwen2VLForConditionalGeneration

        with open(adapter_cfg) as f:
            acfg = json.load(f)
        base_id = T.opt_str(opts.get("base_model")) or acfg.get("base_model_name_or_path")
        if not base_id:
            raise ValueError(f"{self.source}: adapter_config.json names no base model; pass base_model=...")
        base = self.base = str(base_id)
        self.base_revision = None if T.is_local(base) else T.opt_str(opts.get("base_revision"))
        if not (_hub_file(self.source, "adapter_model.safetensors", self.revision) or self.allow_pickle):
            raise T.PickleRefused(f"{self.source} has no adapter_model.safetensors (only a pickle, if any); "
                                  "loading a pickle can run arbitrary code. Pass allow_pickle=True if you "
                                  "trust the file.")
        full, base_weights = self._from_pretrained(Qwen2VLForConditionalGeneration, base, self.base_revision)
        kw = {"revision": self.revision} if self.revision else {}
        with T.quiet_transformers():
            merged = PeftModel.from_pretrained(full, self.source, **kw).merge_and_unload()
        self.weights = {"peft": {**T.weights_fingerprint(self.source, self.revision),
                                    "type": acfg.get("peft_type"), "use_dora": bool(acfg.get("use_dora"))},
                        "base": {"id": base, **base_weights}}
        has_tok = _hub_file(self.source, "tokenizer_config.json", self.revision)
        return merged.model, (self.source if has_tok else base), (
            self.revision if has_tok else self.base_revision)

    def _load_processors(self, source: str, revision: str | None, opts: dict[str, Any]) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        kw = T.hf_kwargs(revision, self.trc)
        with T.quiet_transformers():
            improc = AutoImageProcessor.from_pretrained(source, **kw)
            unit = (int(improc.patch_size) * int(improc.merge_size)) ** 2
            lo = (T.opt_int(opts["min_pixels"], "min_pixels") if opts.get("min_pixels") is not None else
                  T.opt_int(opts["min_image_tokens"], "min_image_tokens") * unit
                  if opts.get("min_image_tokens") is not None else None)
            hi = (T.opt_int(opts["max_pixels"], "max_pixels") if opts.get("max_pixels") is not None else
                  T.opt_int(opts["max_image_tokens"], "max_image_tokens") * unit
                  if opts.get("max_image_tokens") is not None else None)
            if lo is not None or hi is not None:  # else: the checkpoint's own budget, as VLM2Vec runs it
                cur_lo, cur_hi = _budget(improc)
                lo, hi = lo or cur_lo, hi or cur_hi
                if not 0 < lo <= hi:
                    raise ValueError(f"need 0 < min_pixels <= max_pixels, got {lo} and {hi}")
                improc = AutoImageProcessor.from_pretrained(source, **_pixel_kwargs(lo, hi), **kw)
            self.image_processor = improc
            self.min_pixels, self.max_pixels = _budget(improc)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        self.tokenizer.padding_side = "left"
        self.merge = int(improc.merge_size) ** 2

    # ------------------------------------------------------------------ encoding
    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source, **self.weights,
                "dtype": self.dtype, "attn_implementation": self.attn_implementation,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "max_length": self.max_length,
                "prompt_style": self.prompt_style, "document_newline": self.document_newline,
                "padding": "left", "positions": "mrope-from-attention-mask", "pooling": "last-token",
                "image_processor": T.processor_config(self.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)}}

    def preprocess(self, image: Any) -> dict[str, Any]:
        """The checkpoint's image processor, as VLM2Vec's Qwen2_VL_process_fn calls it (worker threads)."""
        out = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def prompt_for(self, item: Item, role: Role, instruction: str | None) -> str:
        newline = self.prompt_style == "vlm2vec" and (item.text is not None or (
            role == "document" and self.document_newline))
        return vlm2vec_prompt(instruction, item.text, item.image is not None, style=self.prompt_style,
                              newline=newline)

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        import torch
        from PIL import Image

        texts: list[str] = []
        pixel_values: list[torch.Tensor] = []
        grids: list[torch.Tensor] = []
        for it, img in zip(batch.items, batch.images, strict=True):
            T.check_item(it, img)
            p = self.prompt_for(it, role, instruction)
            if it.image is not None:
                pre: Any = self.preprocess(img) if isinstance(img, Image.Image) else img
                pixel_values.append(pre["pixel_values"])
                grids.append(pre["image_grid_thw"])
                p = p.replace(IMAGE_PAD, IMAGE_PAD * (int(pre["image_grid_thw"].prod()) // self.merge), 1)
            texts.append(p)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        expected = sum(int(g.prod()) // self.merge for g in grids)
        if int((ids == self.image_token_id).sum()) != expected:
            raise ValueError("an input was truncated inside its image tokens at "
                             f"max_length={self.max_length}; raise max_length or lower max_image_tokens")
        grid = torch.cat(grids).to(self.device) if grids else None
        # M-RoPE positions from the mask, for every batch (text-only too): padding never shifts a vector
        positions, _ = self.model.get_rope_index(ids, (ids == self.image_token_id).long(),
                                                 image_grid_thw=grid, attention_mask=mask)
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values).to(self.device)
            inputs["image_grid_thw"] = grid
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        return T.to_numpy_f32(hidden[:, -1])  # left padding: the last position is every row's last token


def _budget(improc: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL image processor, in either transformers layout."""
    size = getattr(improc, "size", None)

    def get(key: str) -> Any:
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    lo = get("shortest_edge") or getattr(improc, "min_pixels", None)
    hi = get("longest_edge") or getattr(improc, "max_pixels", None)
    if lo is None or hi is None:
        raise ValueError(f"cannot read the pixel budget of {type(improc).__name__}")
    return int(lo), int(hi)


# ============================================================================= registry
RZEN_INSTRUCTIONS = {"query": MMEB_CIRR + " ", "fashioniq:query": MMEB_FIQ + " ", "document": MMEB_IMAGE}
VLM2VEC_INSTRUCTIONS = {"query": MMEB_CIRR, "fashioniq:query": MMEB_FIQ, "document": MMEB_IMAGE}

RZEN = ModelSpec(
    name="rzenembed", id="qihoo360/RzenEmbed", revision="ea95c339008f9639420fcb33ba2ba606ea94be78",
    dim=3584, modalities=("image", "text", "image+text"), license="Apache-2.0", parameters=8_291_375_616,
    dtype="bfloat16", default_instructions=RZEN_INSTRUCTIONS,
    description="RzenEmbed (Qwen2-VL-7B): rzen_embed_inference.py's conventions reimplemented without "
                "remote code on the GME adapter: fixed system turn, instruction + text in the user turn on "
                "both sides (MMEB instructions by default), last-token pooling. Revision as pinned in "
                "an mteb RzenEmbedWrapper found in public code. bfloat16 on GPU, float32 on CPU.",
    extra={"family": "rzen"})
VLM2VEC_V2 = ModelSpec(
    name="vlm2vec-v2", id="VLM2Vec/VLM2Vec-V2.0", revision="e39ff079b8275ef876d3656da8c0bddbff3c4dde",
    dim=1536, modalities=("image", "text", "image+text"), license="Apache-2.0", parameters=2_208_985_600,
    dtype="bfloat16", default_instructions=VLM2VEC_INSTRUCTIONS,
    description="VLM2Vec-V2.0: a DoRA adapter on Qwen/Qwen2-VL-2B-Instruct (base revision unpinned: main), "
                "merged with peft (pip install peft). Prompts of VLM2Vec's MMEB-V2 image_i2i_vg parser "
                "(MMEB instructions), left padding, last-token pooling. Adapter revision as pinned in mteb's "
                "registry. bfloat16 on GPU, float32 on CPU.",
    extra={"family": "vlm2vec"})


def _rzen_factory(spec: ModelSpec, **options: Any) -> RzenEmbedEncoder:
    return RzenEmbedEncoder(spec, **options)


def _rzen_family(target: str, **options: Any) -> RzenEmbedEncoder:
    spec = dataclasses.replace(RZEN, name=f"rzen:{target}", id=target, revision=None, dim=None,
                               parameters=None, license="unknown",
                               description=f"RzenEmbed-style Qwen2-VL embeddings from {target}")
    return RzenEmbedEncoder(spec, **options)


def _vlm2vec_factory(spec: ModelSpec, **options: Any) -> VLM2VecEncoder:
    return VLM2VecEncoder(spec, **options)


def _vlm2vec_family(target: str, **options: Any) -> VLM2VecEncoder:
    return VLM2VecEncoder(None, model_id=target, **options)


register_model(RZEN, _rzen_factory)
register_model(VLM2VEC_V2, _vlm2vec_factory)
register_family("rzen", _rzen_family)
register_family("vlm2vec", _vlm2vec_family)
