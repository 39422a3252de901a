"""Qwen2-VL embedders besides GME: RzenEmbed (`rzenembed`, `rzen:`) and VLM2Vec-V2 (`vlm2vec-v2`, `vlm2vec:`).

Both are Qwen2-VL checkpoints pooled at the last token and L2-normalised; they differ in where the
instruction goes, the prompt around it, the padding and the positions. (E5-V, on LLaVA-NeXT, is in e5v.py.)

RzenEmbed (360CVGroup/RzenEmbed `rzen_embed_inference.py`): GME's conventions (the GME adapter's code runs
it: chat template, `<|endoftext|>` appended, right padding, sequential positions, qwen_vl_utils pre-resize,
256..1280 image tokens), except that the system turn is always "You are a helpful assistant." and the
instruction is glued in front of the user text (`instruction + text`, or the instruction alone for an image)
on *both* sides: queries and gallery images are both instructed. max_length 2000 and bfloat16 on GPU, as in
that file.

VLM2Vec-V2 (TIGER-AI-Lab/VLM2Vec, MMEB-V2 eval, parser `image_i2i_vg`, transformers 4.52.3): no chat
template. The text is `<|image_pad|>\\n{instruction} {text}\\n` for a composed query and
`<|image_pad|>\\n{instruction}` for a gallery image (the image token bare, without vision start/end markers,
expanded to one per merged patch), left padding, the last position's final hidden state. Conventions of
VLM2Vec's own code, each an option:

- positions (`position_ids="sequential"`): VLM2Vec's Qwen2-VL `get_rope_index` gives 3-D M-RoPE positions
  only to images that follow a `<|vision_start|>` token, which these prompts never have, so every token gets
  the plain position `cumsum(attention_mask) - 1` (left padding shifts nothing). `"mrope"` gives the image
  tokens stock Qwen2-VL's 3-D positions instead;
- pixel budget (`pixel_budget="eval"`): eval.py's `resize_min_pixels` / `resize_max_pixels` defaults,
  4·28² .. 1280·28² pixels, which VLM2Vec's processor passes as `size=` and so applies whatever the
  checkpoint's config says; `"checkpoint"` uses the processor config's own budget; `min_image_tokens`,
  `max_image_tokens`, `min_pixels`, `max_pixels` override either;
- images with a side under 28 px are first resized to 56×56 (`Qwen2_VL_process_fn`); no qwen_vl_utils
  pre-resize otherwise; PIL preprocessing (`image_backend="pil"`, VLM2Vec's vendored slow processor);
- `prompt_style="mteb"` uses mteb's VLM2VEC2Wrapper format instead (`<|image_pad|> {instruction} {text}`).

The released VLM2Vec-V2.0 is a DoRA adapter on Qwen2-VL-2B-Instruct, saved from VLM2Vec's training class,
whose module names are transformers 4's. A source holding `adapter_config.json` is loaded with `peft` on
its base model: the adapter's tensors are renamed by transformers' own checkpoint mapping for the model
class, every one must land on a parameter of the adapted model and every adapter parameter must be
loaded (anything else is an error), then the adapter is merged. A full Qwen2-VL checkpoint loads directly.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_int, merge_tables
from cirbench.core.types import Item, Role
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.gme import (
    DEFAULT_INSTRUCTION,
    GME_OPTIONS,
    IMAGE_PAD,
    PIXEL_OPTIONS,
    POSITION_IDS,
    GMEEncoder,
    load_image_processor,
    pixel_budget,
)
from cirbench.models.registry import register_family, register_model

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
VLM2VEC_OPTIONS: OptionTable = (
    *T.LOADING, T.ATTN_IMPLEMENTATION, T.IMAGE_BACKEND, *PIXEL_OPTIONS, POSITION_IDS,
    Option("base_model", help="the model a peft adapter applies to (default: the adapter config's)"),
    Option("base_revision", help="hub revision of base_model"),
    Option("pixel_budget", "choice", "image size limits: eval (VLM2Vec's eval.py), checkpoint (the "
           "processor config's) or eval-min-checkpoint-max", choices=("eval", "checkpoint",
                                                                     "eval-min-checkpoint-max")),
    Option("max_length", "int", "tokens per input", 8192, low=1),
    Option("prompt_style", "choice", "vlm2vec (its MMEB parser's prompts) or mteb", "vlm2vec",
           ("vlm2vec", "mteb")),
    Option("document_newline", "bool", "end gallery prompts with a newline", False),
)
PROMPT_STYLES = ("vlm2vec", "mteb")
PIXEL_BUDGETS = ("eval", "checkpoint", "eval-min-checkpoint-max")
EVAL_BUDGET = (4 * 28 * 28, 1280 * 28 * 28)
"""VLM2Vec's src/arguments.py DataArguments.resize_min_pixels / resize_max_pixels, as eval.py runs them."""
MIN_SIDE, SMALL_RESIZE = 28, (56, 56)
"""Qwen2_VL_process_fn: an image with a side under 28 px is resized to 56x56 before the processor."""


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
    accepted_options: OptionTable = VLM2VEC_OPTIONS
    default_pixel_budget = "eval"
    model_types: dict[str, tuple[str, str]] = {
        "qwen2_vl": ("Qwen2VLModel", "Qwen2VLForConditionalGeneration")}
    """config model_type -> (transformers class of the decoder, of the full model a peft adapter wraps)."""
    base: str | None = None
    """The base model a peft adapter was merged into (None for a full checkpoint)."""
    base_revision: str | None = None

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        opts, source, self.revision = T.adapter_target(self.family, spec, model_id, options,
                                                       self.accepted_options)
        self.source = source
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "bfloat16" if self.device.startswith("cuda") else
                                       "float32")
        self.attn_implementation = T.opt_str(opts.get("attn_implementation"))
        self.max_length = as_int(opts.get("max_length", 8192), "max_length")
        self.prompt_style = str(opts.get("prompt_style", self.family)).lower()
        if self.prompt_style not in (*PROMPT_STYLES, self.family):
            raise ValueError(f"prompt_style must be one of {list(PROMPT_STYLES)}, not {self.prompt_style!r}")
        self.document_newline = as_bool(opts.get("document_newline", False), "document_newline")
        self.position_ids = str(opts.get("position_ids", "sequential")).lower()
        if self.position_ids not in ("sequential", "mrope"):
            raise ValueError("position_ids must be 'sequential' (VLM2Vec's model on its prompts) or "
                             f"'mrope', not {self.position_ids!r}")
        self.pixel_budget = str(opts.get("pixel_budget", self.default_pixel_budget)).lower()
        if self.pixel_budget not in PIXEL_BUDGETS:
            raise ValueError(f"pixel_budget must be one of {list(PIXEL_BUDGETS)} (eval: VLM2Vec's eval.py, "
                             "4..1280 tokens; checkpoint: the processor config's; eval-min-checkpoint-max: "
                             "eval.py's minimum, the processor config's maximum), not "
                             f"{self.pixel_budget!r}")
        self.image_backend = T.parse_image_backend(opts.get("image_backend"))
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
    def _from_pretrained(self, which: int, source: str, revision: str | None) -> tuple[Any, dict[str, Any]]:
        """(model, weights fingerprint) of a Qwen2-VL checkpoint: the decoder (which=0) of a full model, or
        the full model (which=1) an adapter goes on. The config's model_type picks the classes."""
        import transformers

        cfg = T.config_dict(source, revision)
        T.check_remote_code(source, cfg, trust_remote_code=self.trc)
        model_type = cfg.get("model_type")
        if model_type not in self.model_types:
            raise ValueError(f"{source} has model_type {model_type!r}; the {self.family} adapter loads "
                             f"model_type {' or '.join(map(repr, self.model_types))}")
        cls = getattr(transformers, self.model_types[str(model_type)][which])
        return T.load_pretrained(cls, source, revision=revision, dtype=self.dtype, trust_remote_code=self.trc,
                                 allow_pickle=self.allow_pickle, attn_implementation=self.attn_implementation)

    def _load_full(self, source: str, revision: str | None) -> Any:
        model, self.weights = self._from_pretrained(0, source, revision)
        return model

    def _load_adapter(self, adapter_cfg: str, opts: dict[str, Any]) -> tuple[Any, str, str | None]:
        """Base model + peft adapter, merged (what VLM2Vec's MMEBModel.load does), every tensor checked."""
        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise ImportError(f"{self.source} is a peft adapter (adapter_config.json); loading it needs the "
                              "`peft` package: pip install peft") from e
        with open(adapter_cfg) as f:
            acfg = json.load(f)
        base_id = T.opt_str(opts.get("base_model")) or acfg.get("base_model_name_or_path")
        if not base_id:
            raise ValueError(f"{self.source}: adapter_config.json names no base model; pass base_model=...")
        base = self.base = str(base_id)
        self.base_revision = None if T.is_local(base) else T.opt_str(opts.get("base_revision"))
        weights = _hub_file(self.source, "adapter_model.safetensors", self.revision)
        if not weights:
            if self.allow_pickle:
                raise ValueError(f"{self.source} has no adapter_model.safetensors; cirbench loads adapters "
                                 "from safetensors only")
            raise T.PickleRefused(f"{self.source} has no adapter_model.safetensors (only a pickle, if any); "
                                  "loading a pickle can run arbitrary code.")
        full, base_weights = self._from_pretrained(1, base, self.base_revision)
        merged, n_tensors = load_peft_adapter(full, self.source, weights, self.revision)
        self.weights = {"peft": {**T.weights_fingerprint(self.source, self.revision),
                                 "type": acfg.get("peft_type"), "use_dora": bool(acfg.get("use_dora")),
                                 "tensors_loaded": n_tensors},
                        "base": {"id": base, **base_weights}}
        has_tok = _hub_file(self.source, "tokenizer_config.json", self.revision)
        return merged.model, (self.source if has_tok else base), (
            self.revision if has_tok else self.base_revision)

    def _load_processors(self, source: str, revision: str | None, opts: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        kw = T.hf_kwargs(revision, self.trc)
        with T.quiet_transformers():
            saved = load_image_processor(source, kw, self.image_backend)
            unit = (int(saved.patch_size) * int(saved.merge_size)) ** 2
            lo, hi = {"eval": EVAL_BUDGET, "checkpoint": pixel_budget(saved),
                      "eval-min-checkpoint-max": (EVAL_BUDGET[0], pixel_budget(saved)[1])}[self.pixel_budget]
            if opts.get("min_pixels") is not None:
                lo = as_int(opts["min_pixels"], "min_pixels")
            elif opts.get("min_image_tokens") is not None:
                lo = as_int(opts["min_image_tokens"], "min_image_tokens") * unit
            if opts.get("max_pixels") is not None:
                hi = as_int(opts["max_pixels"], "max_pixels")
            elif opts.get("max_image_tokens") is not None:
                hi = as_int(opts["max_image_tokens"], "max_image_tokens") * unit
            if not 0 < lo <= hi:
                raise ValueError(f"need 0 < min_pixels <= max_pixels, got {lo} and {hi}")
            self.image_processor = load_image_processor(source, kw, self.image_backend, (lo, hi))
            self.min_pixels, self.max_pixels = pixel_budget(self.image_processor)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        self.tokenizer.padding_side = "left"
        self.merge = int(self.image_processor.merge_size) ** 2

    # ------------------------------------------------------------------ encoding
    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source, **self.weights,
                "dtype": self.dtype, "attn_implementation": self.attn_implementation,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "pixel_budget": self.pixel_budget,
                "small_images": f"sides < {MIN_SIDE} px resized to {SMALL_RESIZE}",
                "max_length": self.max_length,
                "prompt_style": self.prompt_style, "document_newline": self.document_newline,
                "padding": "left", "position_ids": self.position_ids, "pooling": "last-token",
                "image_backend": self.image_backend, "runtime": T.runtime(),
                "image_processor": T.processor_config(self.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)}}

    def preprocess(self, image: Any) -> dict[str, Any]:
        """The checkpoint's image processor, as VLM2Vec's Qwen2_VL_process_fn calls it (worker threads)."""
        img = image.convert("RGB")
        if min(img.size) < MIN_SIDE:
            img = img.resize(SMALL_RESIZE)  # PIL's default resampling, as Qwen2_VL_process_fn
        out = self.image_processor(images=[img], return_tensors="pt")
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
        if self.position_ids == "sequential":  # VLM2Vec's get_rope_index without a vision-start token
            seq = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
            positions = seq.unsqueeze(0).expand(3, -1, -1)
        else:  # stock Qwen2-VL M-RoPE from the mask: padding never shifts a vector
            positions, _ = self.model.get_rope_index(ids, (ids == self.image_token_id).long(),
                                                     image_grid_thw=grid, attention_mask=mask)
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values).to(self.device)
            inputs["image_grid_thw"] = grid
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
        return T.to_numpy_f32(hidden[:, -1])  # left padding: the last position is every row's last token


def load_peft_adapter(model: Any, source: str, weights: str, revision: str | None) -> tuple[Any, int]:
    """(merged model, number of adapter tensors) of a peft adapter on `model`, refusing any partial load.

    peft matches tensor names literally; an adapter saved from transformers 4's Qwen2-VL classes
    (`model.layers...`, `visual...`) finds nothing in transformers 5's (`model.language_model.layers...`,
    `model.visual...`), and peft then warns and returns the unchanged base model. Here each name goes through
    transformers' own checkpoint renaming for the model class first, then every tensor must land on an adapter
    parameter and every adapter parameter must come from the file.
    """
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    kw = {"revision": revision} if revision else {}
    config = PeftConfig.from_pretrained(source, **kw)
    config.inference_mode = True
    adapted = get_peft_model(model, config)
    state = load_file(weights)
    rename = checkpoint_renamer(model)
    prefix = "base_model.model."
    renamed = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            raise ValueError(f"{source}: adapter tensor {key!r} does not start with {prefix!r}")
        renamed[prefix + rename(key[len(prefix):])] = tensor
    result = set_peft_model_state_dict(adapted, renamed)
    unexpected = sorted(getattr(result, "unexpected_keys", []) or [])
    adapter_params = {n for n, _ in adapted.named_parameters() if ".lora_" in n}
    missing = sorted(adapter_params & set(getattr(result, "missing_keys", []) or []))
    if unexpected or missing:
        detail = []
        if unexpected:
            detail.append(f"tensors that match no adapter parameter {unexpected[:5]}")
        if missing:
            detail.append(f"adapter parameters the file does not set {missing[:5]}")
        raise ValueError(f"the adapter at {source} does not fit {type(model).__name__}: {'; '.join(detail)}")
    return adapted.merge_and_unload(), len(state)


def checkpoint_renamer(model: Any) -> Any:
    """key -> key: transformers' renaming of checkpoint tensor names for this model class (none if absent).

    transformers 5 keeps it in `conversion_mapping` (WeightRenaming rules); 4.52 .. 4.57 as the class's
    `_checkpoint_conversion_mapping` (regex -> replacement); older 4.x needs none for Qwen2-VL.
    """
    import re

    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        legacy = dict(getattr(model, "_checkpoint_conversion_mapping", None) or {})

        def rename_legacy(key: str) -> str:
            for pattern, replacement in legacy.items():
                new, n = re.subn(pattern, replacement, key)
                if n:
                    return new
            return key

        return rename_legacy
    rules = [t for t in get_model_conversion_mapping(model, add_legacy=False)
             if isinstance(t, WeightRenaming)]

    def rename(key: str) -> str:
        for rule in rules:
            key, _ = rule.rename_source_key(key)
        return key

    return rename


# ============================================================================= registry
RZEN_INSTRUCTIONS = {"query": MMEB_CIRR + " ", "cirr:query": MMEB_CIRR + " ",
                     "fashioniq:query": MMEB_FIQ + " ", "document": MMEB_IMAGE}
VLM2VEC_INSTRUCTIONS = {"query": MMEB_CIRR, "cirr:query": MMEB_CIRR, "fashioniq:query": MMEB_FIQ,
                        "document": MMEB_IMAGE}
"""MMEB's instructions per task; "cirr:query" is explicit because a task's own instruction outranks a model's
generic one, and CIRR's is M-BEIR's wording."""

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


def _rzen(spec: ModelSpec | None, target: str | None, **options: Any) -> RzenEmbedEncoder:
    if spec is None:
        spec = dataclasses.replace(RZEN, name=f"rzen:{target}", id=str(target), revision=None, dim=None,
                                   parameters=None, license="unknown",
                                   description=f"RzenEmbed-style Qwen2-VL embeddings from {target}")
    return RzenEmbedEncoder(spec, **options)


def _vlm2vec(spec: ModelSpec | None, target: str | None, **options: Any) -> VLM2VecEncoder:
    return VLM2VecEncoder(spec, model_id=target, **options)


RZEN_OPTIONS = merge_tables(GME_OPTIONS, without=("instruct_documents",))
"""GME's, less instruct_documents: RzenEmbed instructs both sides."""
register_model(RZEN, _rzen, options=RZEN_OPTIONS)
register_model(VLM2VEC_V2, _vlm2vec, options=VLM2VEC_OPTIONS)
register_family("rzen", _rzen, options=RZEN_OPTIONS)
register_family("vlm2vec", _vlm2vec, options=VLM2VEC_OPTIONS)
