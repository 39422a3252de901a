"""E5-V (`e5-v`, `e5v:<hub id or dir>`): LLaVA-NeXT-8B prompted to summarise its input in one word.

E5-V (kongds/E5-V) embeds anything as the last token's final hidden state after a prompt that asks for a
one-word summary, inside Llama-3's chat template (LLAMA3_TEMPLATE below, the README's `llama3_template`).

The prompts per input (`prompts` option, exact strings in PROMPTS below, typos kept because the model was
evaluated with them). The default, "task", lets the task choose as E5-V's retrieval.py does: FashionIQ gets
the per-category set of its query or gallery image, any other task the CIRR set ("e5v"). A set name fixes it:

- e5v: gallery `<image>\\n Describe this image in one word:`; composed query
  `<image>Modify this image with "{text}", desribe modified image in one word:`;
- mteb: gallery `<image>\\nSummary above image in one word: ` (the README's); composed
  `[INST] <image> Modify this image with "{text}" Describe modified image in one word: [/INST]` (mteb's
  e5_v.py, template and all);
- fashioniq-{dress,shirt,toptee}: retrieval.py's FashionIQ prompts (`Describe this {c} in one word based
  on its style`, `change the style of this {c} to {text}`), with toptee named "shirt" as there.

A text alone always gets `{text}\\nSummary above sentence in one word: `. E5-V takes no instruction: the
`instruction` argument is ignored, the prompt set is chosen with the option.

FashionIQ (`fashioniq_captions="e5v"`, the default): retrieval.py's `fiq_two` run strips each caption of
'.?, ', joins the two with ", " in both orders, embeds both (one batch) and sums their *raw* last hidden
states before normalising. `for_task` (called by the eval flow) rewrites a FashionIQ task that way: each query
item carries its two rendered prompt bodies (text and caption), each gallery item its category's image
prompt, so that everything a vector depends on is in the item's content key. `fashioniq_captions="task"`
keeps the task's caption join and alternatives (mean of normalised vectors) with the per-category prompts.

Loaded as `LlavaNextForConditionalGeneration` + `LlavaNextProcessor` (the README's classes); the forward
pass stops before the LM head. Padding is on the left, as in retrieval.py, with Llama-3's end-of-text token
as the pad; positions are computed from the attention mask, so each vector equals the one computed for the
input alone. transformers 4.41 did the same for inputs with an image (its LLaVA merge step derives positions
from the mask); only its text-only batches let left padding shift positions. Processor configs saved
without `patch_size` (E5-V's release) are completed from the model config (`complete_processor`).
Images are preprocessed on PIL (`image_backend="pil"`, transformers 4.41's only backend). float16 on GPU as
in the README, float32 on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_int
from cirbench.core.types import Role
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import register_family, register_model

if TYPE_CHECKING:
    import torch

    from cirbench.core.types import Task

ADAPTER_VERSION = "1"
IMAGE = "<image>"
LLAMA3_TEMPLATE = ("<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant"
                   "<|end_header_id|>\n\n \n")
TEXT_PROMPT = "{text}\nSummary above sentence in one word: "
PROMPTS: dict[str, tuple[str, str]] = {  # (image prompt, composed prompt)
    "e5v": ("<image>\n Describe this image in one word:",
            '<image>Modify this image with "{text}", desribe modified image in one word:'),
    "mteb": ("<image>\nSummary above image in one word: ",
             '[INST] <image> Modify this image with "{text}" Describe modified image in one word: [/INST]'),
}
for _cat, _name in (("dress", "dress"), ("shirt", "shirt"), ("toptee", "shirt")):
    PROMPTS[f"fashioniq-{_cat}"] = (
        f"<image>\n Describe this {_name} in one word based on its style:",
        f"<image> change the style of this {_name} to {{text}}\n Desribe this modified {_name} in one word "
        "based on its style:")
FIQ_CAPTIONS = ("e5v", "task")
E5V_OPTIONS: OptionTable = (
    *T.LOADING, T.ATTN_IMPLEMENTATION, T.IMAGE_BACKEND,
    Option("prompts", "choice", "prompt set: task (chosen by the task), or one fixed set", "task",
           ("task", *PROMPTS), parser=lambda v: parse_prompts(v)),
    Option("fashioniq_captions", "choice", "FashionIQ captions: e5v (both orders, raw states summed) or "
           "task (the task's join)", "e5v", FIQ_CAPTIONS),
    Option("max_length", "int", "tokens per input", 8192, low=1),
)
FIQ_STRIP = ".?, "
"""retrieval.py strips these from both ends of each FashionIQ caption: `cc.strip('.?, ')`."""


def parse_prompts(value: Any) -> str:
    name = str(value).lower()
    if name not in PROMPTS and name != "task":
        raise ValueError(f"prompts must be 'task' or one of {sorted(PROMPTS)}, not {name!r}")
    return name


def e5v_body(text: str | None, has_image: bool, prompts: str = "e5v") -> str:
    """The user turn of E5-V's prompt for one item (`<image>` not yet expanded to the image's tokens)."""
    image_prompt, composed = PROMPTS[prompts]
    if has_image:
        return composed.replace("{text}", text) if text is not None else image_prompt
    if text is not None:
        return TEXT_PROMPT.replace("{text}", text)
    raise ValueError("an E5-V input needs an image or a text")


def e5v_prompt(text: str | None, has_image: bool, prompts: str = "e5v") -> str:
    """The full E5-V input string for one item (`<image>` not yet expanded to the image's tokens)."""
    return LLAMA3_TEMPLATE.format(e5v_body(text, has_image, prompts))


def fiq_caption_orders(c1: str, c2: str) -> tuple[str, str]:
    """retrieval.py's fiq_two texts: both captions stripped of '.?, ', joined by ', ', in both orders."""
    a, b = c1.strip(FIQ_STRIP), c2.strip(FIQ_STRIP)
    return f"{a}, {b}", f"{b}, {a}"


class E5VEncoder:
    """E5-V embeddings from a LLaVA-NeXT checkpoint (see the module docstring)."""

    family = "e5v"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoProcessor, LlavaNextForConditionalGeneration

        opts, source, self.revision = T.adapter_target("e5v", spec, model_id, options, E5V_OPTIONS)
        self.source = source
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float16" if self.device.startswith("cuda") else
                                       "float32")
        self.attn_implementation = T.opt_str(opts.get("attn_implementation"))
        self.prompts = parse_prompts(opts.get("prompts", "task"))
        self.fashioniq_captions = str(opts.get("fashioniq_captions", "e5v")).lower()
        if self.fashioniq_captions not in FIQ_CAPTIONS:
            raise ValueError(f"fashioniq_captions must be one of {list(FIQ_CAPTIONS)}, not "
                             f"{self.fashioniq_captions!r}")
        self.rendered: str | None = None
        """Set by for_task: item texts (and captions) are finished prompt bodies, chosen for this task."""
        self.max_length = as_int(opts.get("max_length", 8192), "max_length")
        self.image_backend = T.parse_image_backend(opts.get("image_backend"))
        trc, allow_pickle = T.safety_options(opts)

        T.checked_config(source, self.revision, trust_remote_code=trc, model_type="llava_next",
                         needs="the e5v adapter needs a LLaVA-NeXT checkpoint")
        model, self.weights = T.load_pretrained(
            LlavaNextForConditionalGeneration, source, revision=self.revision, dtype=self.dtype,
            trust_remote_code=trc, allow_pickle=allow_pickle, attn_implementation=self.attn_implementation)
        with T.quiet_transformers():
            self.processor = AutoProcessor.from_pretrained(source, **T.backend_kwargs(self.image_backend),
                                                           **T.hf_kwargs(self.revision, trc))
        T.check_image_backend(self.processor.image_processor, self.image_backend, source)
        self.image_tokens_from = complete_processor(self.processor, model.config)
        self.model = model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        self._tokenizer_lock = threading.Lock()
        """A fast tokenizer keeps its padding and truncation settings as state: the decode workers'
        `preprocess` and `encode` must not use it at the same time."""
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # retrieval.py: pad_token_id = eos_token_id
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = int(model.config.image_token_index)
        if self.tokenizer.convert_tokens_to_ids(IMAGE) != self.image_token_id:
            raise ValueError(f"{source}: the tokenizer's {IMAGE} id does not match config.image_token_index")
        dim = int(model.config.text_config.hidden_size)
        base = spec or ModelSpec(name=f"{self.family}:{source}", id=source, license="unknown",
                                 description=f"E5-V-style LLaVA-NeXT embeddings from {source}")
        self.spec = dataclasses.replace(base, revision=self.revision, dim=base.dim or dim, dtype=self.dtype,
                                        modalities=("image", "text", "image+text"),
                                        extra={**dict(base.extra), "family": self.family,
                                               "prompts": self.prompts})

    @property
    def prompt_set(self) -> str:
        """The set used for items that carry no rendered prompt (CIRR's unless one was fixed)."""
        return "e5v" if self.prompts == "task" else self.prompts

    def fingerprint(self) -> dict[str, Any]:
        prompts: dict[str, Any] = {"prompts": self.prompts, "prompt_texts": PROMPTS[self.prompt_set]}
        if self.rendered:
            prompts = {"prompts": self.rendered, "prompt_texts": {k: v for k, v in PROMPTS.items()
                                                                   if k.startswith("fashioniq-")},
                       "fashioniq_captions": self.fashioniq_captions}
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source, **self.weights,
                "dtype": self.dtype, "attn_implementation": self.attn_implementation, **prompts,
                "max_length": self.max_length, "padding": "left",
                "positions": "from-attention-mask", "pooling": "last-token",
                "image_backend": self.image_backend, "runtime": T.runtime(),
                "image_tokens": self.image_tokens_from,
                "image_processor": T.processor_config(self.processor.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)}}

    def preprocess(self, image: Any) -> dict[str, Any]:
        """Anyres tiles + the number of `<image>` tokens the processor gives this image (worker threads)."""
        with self._tokenizer_lock:
            out = self.processor(text=[IMAGE], images=[image.convert("RGB")], return_tensors="pt")
        n = int((out["input_ids"] == self.image_token_id).sum())
        return {"pixel_values": out["pixel_values"][0], "image_sizes": out["image_sizes"], "n_tokens": n}

    def for_task(self, task: Task) -> tuple[E5VEncoder, Task]:
        """The encoder and task E5-V's retrieval.py would use for `task` (see the module docstring)."""
        if self.prompts != "task" or task.name != "fashioniq":
            return self, task
        return fashioniq_binding(self, task)

    def bodies(self, item: Any) -> list[str]:
        """The prompt bodies whose raw states are summed into this item's vector (one, or FashionIQ's two)."""
        if self.rendered:
            if item.text is None:
                raise ValueError(f"item {item.id!r} has no rendered E5-V prompt; this encoder was bound to a "
                                 "FashionIQ task and embeds only that task's items")
            return [item.text] + ([item.caption] if item.caption is not None else [])
        return [e5v_body(item.text, item.image is not None, self.prompt_set)]

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, dim) unit rows. E5-V's prompts replace instructions, so `instruction` is not used."""
        import torch
        from PIL import Image

        texts: list[str] = []
        owner: list[int] = []
        tiles: list[torch.Tensor] = []
        sizes: list[torch.Tensor] = []
        n_image_tokens = 0
        for i, (it, img) in enumerate(zip(batch.items, batch.images, strict=True)):
            T.check_item(it, img)
            pre: Any = None
            if it.image is not None:
                pre = self.preprocess(img) if isinstance(img, Image.Image) else img
            for body in self.bodies(it):
                p = LLAMA3_TEMPLATE.format(body)
                if pre is not None:
                    tiles.append(pre["pixel_values"])
                    sizes.append(pre["image_sizes"])
                    p = p.replace(IMAGE, IMAGE * pre["n_tokens"], 1)
                    n_image_tokens += pre["n_tokens"]
                texts.append(p)
                owner.append(i)
        with self._tokenizer_lock:
            tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        if int((ids == self.image_token_id).sum()) != n_image_tokens:
            raise ValueError("an input was truncated inside its image tokens at "
                             f"max_length={self.max_length}; raise max_length")
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                  "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}
        if tiles:
            inputs["pixel_values"] = _pad_tiles(tiles).to(self.device, self.model.dtype)
            inputs["image_sizes"] = torch.cat(sizes).to(self.device)
        with torch.inference_mode():
            last = self.model.model(**inputs).last_hidden_state[:, -1].float()
            # raw states of an item's bodies summed (retrieval.py's fiq_two), then normalised
            summed = torch.zeros(len(batch.items), last.shape[1], device=last.device)
            summed.index_add_(0, torch.tensor(owner, device=last.device), last)
        return T.to_numpy_f32(summed)


def fashioniq_binding(encoder: E5VEncoder, task: Task) -> tuple[E5VEncoder, Task]:
    """E5-V's FashionIQ run as a task: per-category prompts rendered into the items, both caption orders.

    Query items carry the composed prompt body of the first caption order as text and, with
    fashioniq_captions="e5v", that of the second as caption (their raw states are summed); gallery items carry
    their category's image prompt. The protocol records the change.
    """
    category: dict[str, str] = {}
    for name, ids in (task.galleries or {}).items():
        for cid in ids:
            if category.setdefault(cid, name) != name:
                raise ValueError(f"E5-V's FashionIQ prompts are per category, but gallery image {cid!r} is "
                                 f"in both {category[cid]!r} and {name!r}; pass prompts=<a fixed set>")
    if not category:
        raise ValueError(f"E5-V's FashionIQ prompts are per category, and protocol {task.protocol.name!r} "
                         "has no per-category gallery; pass prompts=<a fixed set> (e.g. fashioniq-dress)")
    queries = []
    for q in task.queries:
        cat = q.category or ""
        if f"fashioniq-{cat}" not in PROMPTS:
            raise ValueError(f"FashionIQ query {q.id!r} has category {q.category!r}; E5-V has prompts for "
                             "dress, shirt and toptee")
        set_ = f"fashioniq-{cat}"
        if encoder.fashioniq_captions == "e5v":
            caps = list(q.meta.get("captions") or ())
            if len(caps) != 2:
                raise ValueError(f"FashionIQ query {q.id!r} does not carry its two captions "
                                 "(meta['captions'])")
            first, second = fiq_caption_orders(str(caps[0]), str(caps[1]))
            item = dataclasses.replace(q.item, text=e5v_body(first, True, set_),
                                       caption=e5v_body(second, True, set_))
            queries.append(dataclasses.replace(q, item=item, alt_items=()))
        else:
            queries.append(dataclasses.replace(
                q, item=dataclasses.replace(q.item, text=e5v_body(q.item.text, True, set_)),
                alt_items=tuple(dataclasses.replace(a, text=e5v_body(a.text, True, set_))
                                for a in q.alt_items)))
    corpus = []
    for it in task.corpus:
        if it.id not in category:
            raise ValueError(f"FashionIQ gallery image {it.id!r} is in no category's gallery")
        corpus.append(dataclasses.replace(it, text=e5v_body(None, True, f"fashioniq-{category[it.id]}"),
                                          caption=None))
    join = ("E5-V retrieval.py fiq_two: captions stripped of '.?, ', joined by ', ' in both orders, the raw "
            "last hidden states of the two orders summed, then normalised"
            if encoder.fashioniq_captions == "e5v" else task.protocol.notes.get("caption_join", ""))
    protocol = dataclasses.replace(
        task.protocol,
        caption_join=("e5v-both-orders-sum" if encoder.fashioniq_captions == "e5v"
                      else task.protocol.caption_join),
        notes={**dict(task.protocol.notes), "caption_join": join,
               "model_prompts": "E5-V retrieval.py per-category FashionIQ prompts (toptee named 'shirt'), "
                                "chosen by each query's category and each gallery image's category gallery"})
    bound = copy.copy(encoder)
    bound.rendered = f"task:fashioniq/{encoder.fashioniq_captions}"
    return bound, dataclasses.replace(task, queries=queries, corpus=corpus, protocol=protocol)


def complete_processor(processor: Any, config: Any) -> dict[str, Any]:
    """Give a LlavaNextProcessor what it needs to count image tokens, from the model config if it lacks it.

    Processor configs saved by transformers <= 4.43 (E5-V's release ran 4.41) have no `patch_size` nor
    `vision_feature_select_strategy`: the model then expanded `<image>` itself, while transformers 5's
    processor must expand it and fails without them. The count the model produced is the processor's formula
    with the vision tower's patch size, the config's select strategy and the CLIP tower's CLS token
    (`num_additional_image_tokens=1`, dropped again by the "default" strategy). Returns what was used.
    """
    filled = getattr(processor, "patch_size", None) is None
    if filled:
        processor.patch_size = int(config.vision_config.patch_size)
        processor.vision_feature_select_strategy = str(config.vision_feature_select_strategy)
        processor.num_additional_image_tokens = 1
    return {"patch_size": int(processor.patch_size),
            "vision_feature_select_strategy": processor.vision_feature_select_strategy,
            "num_additional_image_tokens": int(processor.num_additional_image_tokens),
            "source": "model config (processor config has none)" if filled else "processor config"}


def _pad_tiles(tiles: list[torch.Tensor]) -> torch.Tensor:
    """(n_tiles, 3, H, W) tensors -> (batch, max_tiles, 3, H, W), zero-padded as the processor pads."""
    import torch

    n = max(t.shape[0] for t in tiles)
    out = torch.zeros((len(tiles), n, *tiles[0].shape[1:]), dtype=tiles[0].dtype)
    for i, t in enumerate(tiles):
        out[i, : t.shape[0]] = t
    return out


E5V = ModelSpec(
    name="e5-v", id="royokong/e5-v", revision="0c1f22679417b3ae925d779442221c40cd1861ab", dim=4096,
    modalities=("image", "text", "image+text"), license="unknown", parameters=8_360_000_000, dtype="float16",
    description="E5-V (LLaVA-NeXT-8B, Llama-3): one-word-summary prompts of E5-V's retrieval.py chosen by "
                "the task (FashionIQ: per category, both caption orders summed; else the CIRR set; option "
                "prompts=e5v|mteb|fashioniq-<category> fixes one), last-token pooling. Revision pinned as "
                "in mteb's registry; the hub card declares no licence. float16 on GPU, float32 on CPU.",
    extra={"family": "e5v"})


def _e5v(spec: ModelSpec | None, target: str | None, **options: Any) -> E5VEncoder:
    return E5VEncoder(spec, model_id=target, **options)


register_model(E5V, _e5v, options=E5V_OPTIONS)
register_family("e5v", _e5v, options=E5V_OPTIONS)
