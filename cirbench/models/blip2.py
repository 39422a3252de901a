"""BLIP-2 Q-Former embeddings with a fused image+text query, as CoVR-2 computes them (`blip2`, `blip2:<id>`).

BLIP-2's first stage (`Blip2ForImageTextRetrieval` in transformers: ViT + Q-Former + two projections) has
three ways to embed an item, and this adapter picks one by the item's modality:

| item        | vector                                                                                  |
|-------------|-----------------------------------------------------------------------------------------|
| image+text  | the Q-Former run on [query tokens; text tokens] with cross-attention to the image (the  |
|             | ITM pass); its query-token outputs go through `text_projection`, each is L2-normalised, |
|             | then they are averaged                                                                  |
| image       | the Q-Former run on the query tokens alone; outputs through `vision_projection`, each   |
|             | normalised, then averaged                                                               |
| text        | the Q-Former run on the text alone; the [CLS] output through `text_projection` (the     |
|             | BLIP-2 ITC text feature)                                                                |

The composed query is CoVR-2's (lucas-ventura/CoVR `src/model/blip2/blip2_cir.py` and
`src/test/blip2/utils.py`): `Qformer.bert(text, query_embeds=query_tokens, encoder_hidden_states=image)`,
`text_proj` on the query-token outputs, normalised per token. Gallery images are CoVR's stored target
features, `extract_features(mode="image").image_embeds_proj`: normalised per-token `vision_proj` outputs.
Stock transformers reaches all of it: `model.embeddings` + `model.qformer` are LAVIS's `Qformer.bert`
(the embedding LayerNorm sits in `qformer.layernorm`), `text_projection` / `vision_projection` are
`text_proj` / `vision_proj`.

Pooling over query tokens is the mean. BLIP-2's ITC, and CoVR's CIRR scorers, score the *max* over token
pairs, which no single vector per item can express; CoVR's other scorers average the tokens of both sides,
and that is what this adapter does. One difference remains: cirbench L2-normalises every vector, while
CoVR's scorers take the dot product of the un-renormalised means, so target ranks can differ where the
mean's length varies between images. Both choices are in `fingerprint()` (`pooling`, `scorer`).

Texts are cleaned like CoVR's datasets (`pre_caption`: lower-case, `.!"()*#:;~` to spaces, whitespace
collapsed, at most `max_words` words; option `pre_caption=false` turns it off) and tokenised with the
checkpoint's tokenizer, padded to the longest and truncated at `max_length` tokens: 64, as every CoVR test
script (src/test/blip2/{cirr,cirr_val,circo,fashioniq}.py) calls the tokenizer, not the model's training
`max_txt_len` of 32. Images go through the PIL backend by default (`image_backend`), like LAVIS's
torchvision transforms on PIL images.

Scorers: CoVR's CIRCO and FashionIQ test scripts score the mean of the normalised query tokens against the
mean of the target's, which this adapter's vectors reproduce up to the final normalisation. CoVR's CIRR
scripts (cirr.py, cirr_val.py) instead take the max over all query-token x target-token pairs, a
late-interaction score that no single vector per item can carry: cirbench's search is single-vector, so
CIRR numbers from this adapter use the mean (recorded as `scorer` in the fingerprint), not CoVR's max.

The released CoVR-BLIP-2 checkpoints are Lightning pickles of LAVIS modules, which transformers cannot load;
the aliases are Salesforce's BLIP-2 retrieval checkpoints, zero-shot for CIR. A CoVR checkpoint converted to
the transformers layout loads with `blip2:<dir>`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_int
from cirbench.core.types import Role
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import register_family, register_model

if TYPE_CHECKING:
    import torch

ADAPTER_VERSION = "1"
POOLING = "mean-of-normalised-query-tokens"
BLIP2_OPTIONS: OptionTable = (
    *T.LOADING, T.IMAGE_BACKEND,
    Option("max_length", "int", "text tokens", 64, low=1),
    Option("pre_caption", "bool", "clean texts as LAVIS's pre_caption does", True),
    Option("max_words", "int", "words kept by pre_caption", 30, low=1),
)
SCORER = ("dot product of the normalised means of normalised query tokens (CoVR's CIRCO / FashionIQ test "
          "scorer up to normalisation; not its CIRR max over token pairs)")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """CoVR's (and LAVIS's) caption cleaning, which the model saw in training and evaluation."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


class Blip2Encoder:
    """BLIP-2 Q-Former features from a `Blip2ForImageTextRetrieval` checkpoint (see the module docstring)."""

    family = "blip2"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval

        opts, source, self.revision = T.adapter_target("blip2", spec, model_id, options, BLIP2_OPTIONS)
        self.source = source
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        self.max_length = as_int(opts.get("max_length", 64), "max_length")
        self.image_backend = T.parse_image_backend(opts.get("image_backend"))
        self.pre_caption = as_bool(opts.get("pre_caption", True), "pre_caption")
        self.max_words = as_int(opts.get("max_words", 30), "max_words")
        trc, allow_pickle = T.safety_options(opts)

        cfg = T.checked_config(source, self.revision, trust_remote_code=trc, model_type="blip-2",
                               needs="the blip2 adapter needs a BLIP-2 checkpoint")
        if not (cfg.get("qformer_config") or {}).get("use_qformer_text_input", False):
            raise ValueError(f"{source} is a BLIP-2 checkpoint without the Q-Former's text input (a "
                             "captioning/LLM checkpoint); the blip2 adapter needs a retrieval (ITM) "
                             "checkpoint such as Salesforce/blip2-itm-vit-g")
        model, self.weights = T.load_pretrained(
            Blip2ForImageTextRetrieval, source, revision=self.revision, dtype=self.dtype,
            trust_remote_code=trc, allow_pickle=allow_pickle)
        kw = T.hf_kwargs(self.revision, trc)
        with T.quiet_transformers():
            self.image_processor = AutoImageProcessor.from_pretrained(
                source, **T.backend_kwargs(self.image_backend), **kw)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        T.check_image_backend(self.image_processor, self.image_backend, source)
        self.model = model.to(self.device).eval()
        self.tokenizer.padding_side = "right"
        self.n_query = int(model.config.num_query_tokens)
        self._pix_dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        dim = int(model.config.image_text_hidden_size)
        base = spec or ModelSpec(name=f"{self.family}:{source}", id=source, license="unknown",
                                 description=f"BLIP-2 Q-Former embeddings (CoVR-2 fusion) from {source}")
        self.spec = dataclasses.replace(base, revision=self.revision, dim=base.dim or dim, dtype=self.dtype,
                                        modalities=("image", "text", "image+text"),
                                        extra={**dict(base.extra), "family": self.family, "pooling": POOLING})

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source, **self.weights,
                "model_class": type(self.model).__name__, "dtype": self.dtype, "pooling": POOLING,
                "fusion": "qformer-itm-pass+text_projection (CoVR-2)", "max_length": self.max_length,
                "scorer": SCORER, "image_backend": self.image_backend, "runtime": T.runtime(),
                "pre_caption": self.pre_caption, "max_words": self.max_words,
                "image_processor": T.processor_config(self.image_processor),
                "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)}}

    def preprocess(self, image: Any) -> Any:
        """PIL image -> pixel tensor (1, 3, H, W); runs in the encode loop's worker threads."""
        return self.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]

    def clean(self, text: str) -> str:
        return pre_caption(text, self.max_words) if self.pre_caption else text

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, dim) unit rows. BLIP-2 takes no instruction and embeds queries and documents alike."""
        import torch
        from PIL import Image

        fused: list[int] = []
        images: list[int] = []
        texts: list[int] = []
        for i, (it, img) in enumerate(zip(batch.items, batch.images, strict=True)):
            T.check_item(it, img)
            (fused if it.image is not None and it.text is not None else
             images if it.image is not None else texts).append(i)
        pixels: dict[int, Any] = {}
        for i in fused + images:
            img = batch.images[i]
            pixels[i] = self.preprocess(img) if isinstance(img, Image.Image) else img
        out = torch.zeros(len(batch.items), self.spec.dim or 0, dtype=torch.float32)
        with torch.inference_mode():
            if fused:
                txt = [self.clean(str(batch.items[i].text)) for i in fused]
                out[fused] = self._fused(self._vision([pixels[i] for i in fused]), txt).float().cpu()
            if images:
                out[images] = self._image(self._vision([pixels[i] for i in images])).float().cpu()
            if texts:
                out[texts] = self._text([self.clean(str(batch.items[i].text)) for i in texts]).float().cpu()
        return T.to_numpy_f32(out)

    def encode_tokens(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, num_query_tokens, dim): every query token's output, normalised, before the mean.

        The optional token-set hook for late-interaction search (`cirbench.retrieval.late_interaction`):
        CoVR's CIRR scorers compare these sets by their best pair. Composed queries take the ITM pass and
        `text_projection`, images the image pass and `vision_projection`; a text alone has one [CLS]
        vector, not a token set, and is refused.
        """
        import torch
        from PIL import Image

        for it, img in zip(batch.items, batch.images, strict=True):
            T.check_item(it, img)
            if it.image is None:
                raise ValueError(f"item {it.id!r} is text only: BLIP-2 token sets need an image")
        pixels: list[Any] = [self.preprocess(img) if isinstance(img, Image.Image) else img
                             for img in batch.images]
        fused = [i for i, it in enumerate(batch.items) if it.text is not None]
        images = [i for i, it in enumerate(batch.items) if it.text is None]
        out = torch.zeros(len(batch.items), self.n_query, self.spec.dim or 0, dtype=torch.float32)
        with torch.inference_mode():
            if fused:
                txt = [self.clean(str(batch.items[i].text)) for i in fused]
                h = self._fused_hidden(self._vision([pixels[i] for i in fused]), txt)
                out[fused] = self._query_tokens(h, self.model.text_projection).cpu()
            if images:
                h = self._image_hidden(self._vision([pixels[i] for i in images]))
                out[images] = self._query_tokens(h, self.model.vision_projection).cpu()
        return out.numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ the three passes
    def _vision(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        pv = torch.cat(list(pixels)).to(self.device, self._pix_dtype)
        return self.model.vision_model(pixel_values=pv).last_hidden_state

    def _tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    def _query_tokens(self, hidden: torch.Tensor, proj: Any) -> torch.Tensor:
        import torch

        h = hidden[:, : self.n_query].to(proj.weight.dtype)
        return torch.nn.functional.normalize(proj(h).float(), dim=-1)

    def _query_mean(self, hidden: torch.Tensor, proj: Any) -> torch.Tensor:
        return self._query_tokens(hidden, proj).mean(dim=1)

    def _image_hidden(self, image_embeds: torch.Tensor) -> torch.Tensor:
        import torch

        q = self.model.query_tokens.expand(image_embeds.shape[0], -1, -1)
        att = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return self.model.qformer(query_embeds=q, encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=att).last_hidden_state

    def _image(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self._query_mean(self._image_hidden(image_embeds), self.model.vision_projection)

    def _fused_hidden(self, image_embeds: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        import torch

        ids, mask = self._tokens(texts)
        q = self.model.query_tokens.expand(image_embeds.shape[0], -1, -1)
        emb = self.model.embeddings(input_ids=ids, query_embeds=q)
        mask = torch.cat([torch.ones(q.shape[:-1], dtype=mask.dtype, device=mask.device), mask], dim=1)
        att = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return self.model.qformer(query_embeds=emb, query_length=self.n_query, attention_mask=mask,
                                  encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=att).last_hidden_state

    def _fused(self, image_embeds: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self._query_mean(self._fused_hidden(image_embeds, texts), self.model.text_projection)

    def _text(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        ids, mask = self._tokens(texts)
        h = self.model.qformer(query_embeds=self.model.embeddings(input_ids=ids), query_length=0,
                               attention_mask=mask).last_hidden_state[:, 0]
        proj = self.model.text_projection
        return torch.nn.functional.normalize(proj(h.to(proj.weight.dtype)).float(), dim=-1)


def _blip2(spec: ModelSpec | None, target: str | None, **options: Any) -> Blip2Encoder:
    return Blip2Encoder(spec, model_id=target, **options)


_UNPINNED = "Revision unpinned (main): no pinned commit was found in public sources."
BLIP2_ITM = ModelSpec(
    name="blip2", id="Salesforce/blip2-itm-vit-g", revision="main", dim=256,
    modalities=("image", "text", "image+text"), license="unknown", parameters=1_170_000_000,
    description="BLIP-2 first stage (EVA ViT-g + Q-Former, pretrained), zero-shot CIR with CoVR-2's fusion: "
                "query = Q-Former ITM pass over (reference image, text), text_projection, mean of normalised "
                "query tokens; gallery = mean of normalised vision_projection query tokens. Licence not "
                f"verified here (LAVIS, the original code, is BSD-3-Clause). {_UNPINNED}",
    extra={"family": "blip2", "pooling": POOLING})
BLIP2_ITM_COCO = dataclasses.replace(
    BLIP2_ITM, name="blip2-coco", id="Salesforce/blip2-itm-vit-g-coco",
    description=BLIP2_ITM.description.replace("pretrained)", "fine-tuned on COCO retrieval; CoVR-2 "
                                              "fine-tunes the ViT-L variant of this, which is not on the "
                                              "hub in transformers format)"))

register_model(BLIP2_ITM, _blip2, options=BLIP2_OPTIONS)
register_model(BLIP2_ITM_COCO, _blip2, options=BLIP2_OPTIONS)
register_family("blip2", _blip2, options=BLIP2_OPTIONS)
