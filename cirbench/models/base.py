"""The Encoder interface and the metadata every model carries.

An Encoder turns a batch of Items into L2-normalised vectors (or, with `unit_vectors = False`, vectors whose
inner product is the model's score as they are). It never sees tasks or metrics: the encode
loop hands it decoded images (or whatever its `preprocess` returned, computed in worker threads), or, for an
encoder with the optional `read_image` hook, whatever that returned for each Item.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cirbench.core.types import Item, Role, Task


@dataclass(frozen=True)
class ModelSpec:
    """Registry metadata: what a model is, where its weights come from, and what it can embed."""

    name: str
    """Short alias used on the command line (e.g. "clip-b32")."""
    id: str
    """Hub id or local path of the weights; recorded in results."""
    revision: str | None = None
    dim: int | None = None
    modalities: tuple[str, ...] = ("image", "text", "image+text")
    """Input modalities the model can embed (any of "image", "text", "image+text")."""
    license: str = "unknown"
    parameters: int | None = None
    dtype: str = "float32"
    description: str = ""
    default_instructions: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["default_instructions"] = dict(self.default_instructions)
        d["extra"] = dict(self.extra)
        return d


@dataclass
class Batch:
    """What an Encoder receives: the Items and, for those with an image, the decoded/preprocessed image
    (or what the encoder's `read_image` returned)."""

    items: Sequence[Item]
    images: Sequence[Any | None]

    @property
    def texts(self) -> list[str | None]:
        return [it.text for it in self.items]


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds Items. Implementations live in cirbench/models/ or in user plugins.

    Optional members the encode loop looks for: `needs_images` (False: no image is decoded for it),
    `read_image(item)` (ReadImageFn) or else `preprocess(pil_image)` (PreprocessFn), both run in its worker
    threads, and `vectors_by_id` (True: a vector belongs to the item's id rather than to its content, so
    items are never de-duplicated or cached by content). The eval flow also looks for `for_task(task)`
    (see `bind_task`), and the late-interaction retriever for `encode_tokens(batch, role=, instruction=)`:
    (n, tokens, dim) normalised token vectors (BLIP-2's query tokens).
    """

    spec: ModelSpec

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a vector (id, revision, dtype, preprocessing, options): the cache key."""
        ...

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(len(batch.items), dim) float32, L2-normalised rows."""
        ...


PreprocessFn = Callable[[Any], Any]
"""Optional `Encoder.preprocess(pil_image)`: runs in the decode workers, so the model only does math."""

ReadImageFn = Callable[[Item], Any]
"""Optional `Encoder.read_image(item)`: when an encoder has it, the encode loop's workers call it instead of
`item.load_image()` + `preprocess`, and `Batch.images` holds what it returned. For an encoder that decodes
batches itself (on the GPU, from the files' bytes); it must raise DatasetError for a bad image, as
`Item.load_image` does."""


def bind_task(encoder: Encoder, task: Task) -> tuple[Encoder, Task]:
    """The encoder and task to evaluate: an encoder whose inputs follow the benchmark (E5-V's per-category
    FashionIQ prompts and caption joining) rewrites both in an optional `for_task(task)`; others pass as is.

    Whatever such a rewrite changes in a vector must be in the items' content and the encoder's fingerprint,
    and what it changes in the protocol in the returned task's protocol, so results and caches record it.
    """
    hook = getattr(encoder, "for_task", None)
    return hook(task) if callable(hook) else (encoder, task)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def check_modalities(spec: ModelSpec, needed: Mapping[str, str]) -> None:
    """Refuse a model that cannot embed a side of the task, before any encoding starts.

    `needed` maps side ("query", "corpus") to the modality that side needs.
    """
    for side, modality in needed.items():
        if modality not in spec.modalities:
            raise ValueError(
                f"model {spec.name!r} cannot embed the {side} side of this task: it needs {modality!r} "
                f"input, and the model supports only {list(spec.modalities)}"
            )
