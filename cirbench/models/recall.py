"""ReCALL (CVPR 2026, RemRico/Recall): a Qwen2-VL / Qwen2.5-VL embedder with a LoRA adapter (`recall:<dir>`).

ReCALL's code is a VLM2Vec fork (its `MMEBModel`), so this is a configuration of the VLM2Vec-V2 adapter
(cirbench.models.vlm): the same loading (a full checkpoint, or a peft adapter on its base model, every
tensor checked, then merged), left padding with positions from the mask, last-token pooling, L2
normalisation. What differs is the prompt and the image budget, read in RemRico/Recall @ 2d864f2:

- prompt (`src/model/processor.py::qwen_retrieval_prompt_template`): a chat turn with ReCALL's own system
  prompt, the bare `<|image_pad|>` (no vision start/end markers, so stock Qwen2-VL gives every token its
  sequential position, as VLM2Vec's adapter does by default) glued to the text, and `<|endoftext|>` after
  the assistant marker: `<|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\n<|image_pad|>{text}`
  `<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>`;
- the one-word instruction pair (`src/evaluation/cirr_evaluator.py`): a composed query's text is
  `Modify this image with <{caption}>\\nRepresent the modified image in one word:`, a gallery image's
  `Represent the given image in one word:`. The task's instruction is not used (the config file's
  `query_instruction` is not what the evaluator encodes with either);
- image budget: 4·28² pixels (VLM2Vec's `resize_min_pixels`) up to the checkpoint's own `max_pixels`
  (eval_cirr.py aligns `resize_max_pixels` with the checkpoint's preprocessor_config.json), i.e.
  `pixel_budget="eval-min-checkpoint-max"`.

ReCALL embeds images and composed queries; a text-only item has no prompt in its code, so the model
declares only those modalities. Its FashionIQ evaluator uses a per-category wording ("Change the style of
this {category} to <{caption}>"), which this adapter does not reproduce: FashionIQ runs get the CIRR pair.
No ReCALL weights are public (2026-12); a LoRA saved by ReCALL's trainer (adapter_config.json +
adapter_model.safetensors) or a merged checkpoint loads with `recall:<dir>`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cirbench.core.options import merge_tables
from cirbench.core.types import Item, Role
from cirbench.models.base import ModelSpec
from cirbench.models.gme import IMAGE_PAD
from cirbench.models.registry import register_family
from cirbench.models.vlm import VLM2VEC_OPTIONS, VLM2VecEncoder

SYSTEM = ("You are a multimodal retrieval encoder (not a conversational assistant). Your sole function is "
          "to map any input—image(s), text, or image(s) plus text—into a compact embedding for "
          "nearest-neighbor retrieval in a shared space.")
QUERY_PROMPT = "Modify this image with <{text}>\nRepresent the modified image in one word:"
IMAGE_PROMPT = "Represent the given image in one word:"
RECALL_OPTIONS = merge_tables(VLM2VEC_OPTIONS, without=("prompt_style", "document_newline"))


def recall_prompt(text: str | None, has_image: bool) -> str:
    """The exact string ReCALL's evaluator encodes for one item (`<|image_pad|>` not yet expanded)."""
    if not has_image:
        raise ValueError("ReCALL has no prompt for a text-only item (its evaluator embeds images and "
                         "composed queries only)")
    body = QUERY_PROMPT.replace("{text}", text) if text is not None else IMAGE_PROMPT
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{IMAGE_PAD}{body}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>")


class RecallEncoder(VLM2VecEncoder):
    """ReCALL: VLM2Vec's loading and pooling with ReCALL's prompt pair (see the module docstring)."""

    family = "recall"
    accepted_options = RECALL_OPTIONS
    default_pixel_budget = "eval-min-checkpoint-max"
    model_types = {"qwen2_vl": ("Qwen2VLModel", "Qwen2VLForConditionalGeneration"),
                   "qwen2_5_vl": ("Qwen2_5_VLModel", "Qwen2_5_VLForConditionalGeneration")}

    def __init__(self, spec: ModelSpec | None = None, *, model_id: str | None = None, **options: Any) -> None:
        super().__init__(spec, model_id=model_id, **options)
        self.spec = dataclasses.replace(
            self.spec, modalities=("image", "image+text"), default_instructions={},
            description=self.spec.description if spec else f"ReCALL (Qwen-VL + LoRA) embeddings from "
                                                            f"{self.source}")

    def prompt_for(self, item: Item, role: Role, instruction: str | None) -> str:
        return recall_prompt(item.text, item.image is not None)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp.pop("document_newline", None)
        return {**fp, "adapter": f"{self.family}/1", "model_type": self.model.config.model_type,
                "prompts": {"system": SYSTEM, "query": QUERY_PROMPT, "document": IMAGE_PROMPT}}


def _recall(spec: ModelSpec | None, target: str | None, **options: Any) -> RecallEncoder:
    return RecallEncoder(spec, model_id=target, **options)


register_family("recall", _recall, options=RECALL_OPTIONS)
