"""sentence-transformers text models (`st:<hub id or dir>`): the text-only side of CIR baselines.

A text model cannot look at pixels, so it ranks a gallery by its captions: the query's modification text is
embedded and compared with each gallery image's caption (Item.caption, e.g. a benchmark's or a captioner's
description). The image of a composed query is ignored. What can be embedded:

- an item with text: its text (the image, if any, is ignored);
- an image-only item: its caption, when `use_captions=True` (the default); an image without a caption is
  an error naming the item, because embedding an empty string would silently rank it at random.

So the spec's modalities are ("text", "image+text", "image") with captions and ("text", "image+text")
without; `spec.extra["needs_captions"]` tells the eval flow that image items must carry captions.
Instructions are ignored unless `use_instructions=True`, which passes them as the sentence-transformers
`prompt` (for instruction-tuned text embedders).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cirbench.core.options import Option, OptionTable, as_bool, as_int
from cirbench.core.types import DatasetError, Item, Role
from cirbench.models import _torch as T
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import register_family, register_model

ADAPTER_VERSION = "1"
ST_OPTIONS: OptionTable = (
    *T.LOADING,
    Option("use_captions", "bool", "embed a gallery image through its caption", True),
    Option("use_instructions", "bool", "prefix texts with the task's instruction", False),
    Option("max_seq_length", "int", "tokens per text (default: the model's)", low=1),
)


class SentenceTransformerEncoder:
    """A sentence-transformers model, loaded with safetensors only and no remote code unless allowed.

    Options: revision, device, dtype (default float32), use_captions (default True), use_instructions
    (default False), trust_remote_code (default False), allow_pickle (default False), max_seq_length.
    """

    family = "st"

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        from sentence_transformers import SentenceTransformer

        opts, source, self.revision = T.adapter_target("st", spec, model_id, options, ST_OPTIONS)
        self.source = source
        self.device = T.resolve_device(opts.get("device"))
        self.dtype = T.canonical_dtype(opts.get("dtype"), "float32")
        self.use_captions = as_bool(opts.get("use_captions", True), "use_captions")
        self.use_instructions = as_bool(opts.get("use_instructions", False), "use_instructions")
        trc, allow_pickle = T.safety_options(opts)
        T.check_local_weights(source, allow_pickle=allow_pickle)
        model_kwargs: dict[str, Any] = {"dtype": T.torch_dtype(self.dtype)}
        if not allow_pickle:
            model_kwargs["use_safetensors"] = True
        with T.quiet_transformers(), T.safetensors_only(source, allow_pickle):
            self.model = SentenceTransformer(source, device=self.device, revision=self.revision,
                                             trust_remote_code=trc, model_kwargs=model_kwargs)
        self.weights = T.weights_fingerprint(source, self.revision)  # once: the weights actually loaded
        if opts.get("max_seq_length") is not None:
            self.model.max_seq_length = as_int(opts["max_seq_length"], "max_seq_length")
        self.model.eval()
        get_dim = (getattr(self.model, "get_embedding_dimension", None)
                   or self.model.get_sentence_embedding_dimension)
        dim = get_dim()
        modalities = ("text", "image+text", "image") if self.use_captions else ("text", "image+text")
        base = spec or ModelSpec(name=f"{self.family}:{source}", id=source, license="unknown",
                                 description=f"sentence-transformers text model {source}")
        self.spec = dataclasses.replace(
            base, revision=self.revision, dim=base.dim or dim, modalities=modalities, dtype=self.dtype,
            extra={**dict(base.extra), "family": self.family, "needs_captions": self.use_captions})

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": f"{self.family}/{ADAPTER_VERSION}", "id": self.source,
                **self.weights, "dtype": self.dtype,
                "use_captions": self.use_captions, "use_instructions": self.use_instructions,
                "max_seq_length": self.model.max_seq_length,
                "modules": [type(m).__name__ for m in self.model]}

    def text_of(self, item: Item) -> str:
        """The text this model embeds for an item (see the module docstring)."""
        if item.text is not None:
            return item.text
        if item.image is not None and self.use_captions:
            if item.caption is None:
                raise DatasetError(f"model {self.spec.name!r} embeds gallery images by their caption, and "
                                   "this image has none", record=item.id, field="caption")
            return item.caption
        raise DatasetError(f"model {self.spec.name!r} is a text model and this item has no text",
                           record=item.id, field="text")

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        texts = [self.text_of(it) for it in batch.items]
        prompt = instruction if (self.use_instructions and instruction) else None
        out = self.model.encode(texts, prompt=prompt, batch_size=max(1, len(texts)), convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def _st(spec: ModelSpec | None, target: str | None, **options: Any) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(spec, model_id=target, **options)


MINILM = ModelSpec(
    name="minilm-l6", id="sentence-transformers/all-MiniLM-L6-v2",
    revision="1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
    dim=384, modalities=("text", "image+text", "image"), license="Apache-2.0", parameters=22_700_000,
    description="all-MiniLM-L6-v2 text embedder: modification text vs gallery captions (text-only baseline). "
                "Revision as pinned by several public projects.",
    extra={"family": "st", "needs_captions": True})
register_model(MINILM, _st, options=ST_OPTIONS)
register_family("st", _st, options=ST_OPTIONS)
