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

    Beyond these two methods the eval flow looks for the optional members that `EncoderHooks` declares
    (`OPTIONAL_HOOKS`); an encoder has any of them or none.
    """

    spec: ModelSpec

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a vector (id, revision, dtype, preprocessing, options): the cache key."""
        ...

    def encode(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(len(batch.items), dim) float32, L2-normalised rows."""
        ...


class EncoderHooks(Protocol):
    """The optional Encoder members, typed: what the encode loop and the retrievers look up if present."""

    needs_images: bool
    """False: no image is decoded for this encoder (its vectors come from elsewhere)."""
    vectors_by_id: bool
    """True: a vector belongs to the item's id, not its content: never de-duplicated or cached by content."""
    unit_vectors: bool
    """False: rows are not unit vectors and the score is their inner product (HUG's augmented distances)."""

    def read_image(self, item: Item) -> Any:
        """Run in the decode workers instead of `item.load_image()` + `preprocess` (see ReadImageFn)."""
        ...

    def preprocess(self, image: Any) -> Any:
        """PIL image -> what `encode` takes, in the decode workers (see PreprocessFn)."""
        ...

    def for_views(self, views: Mapping[str, str]) -> Encoder:
        """The encoder for a task whose sides show these views (`TaskMetadata.views`, role -> view): for
        models with one head per kind of input. Called by `bind_task` when the task declares views."""
        ...

    def for_task(self, task: Task) -> tuple[Encoder, Task]:
        """E5-V only, for now: the encoder and task E5-V's own FashionIQ run uses (`bind_task`)."""
        ...

    def encode_tokens(self, batch: Batch, *, role: Role, instruction: str | None = None) -> np.ndarray:
        """(n, tokens, dim) normalised token vectors, for the late-interaction retriever."""
        ...


OPTIONAL_HOOKS: tuple[str, ...] = tuple(dict.fromkeys(
    n for n in (*EncoderHooks.__annotations__, *vars(EncoderHooks)) if not n.startswith("_")))
"""The names of `EncoderHooks`' members, in declaration order."""


PreprocessFn = Callable[[Any], Any]
"""Optional `Encoder.preprocess(pil_image)`: runs in the decode workers, so the model only does math."""

ReadImageFn = Callable[[Item], Any]
"""Optional `Encoder.read_image(item)`: when an encoder has it, the encode loop's workers call it instead of
`item.load_image()` + `preprocess`, and `Batch.images` holds what it returned. For an encoder that decodes
batches itself (on the GPU, from the files' bytes); it must raise DatasetError for a bad image, as
`Item.load_image` does."""


def bind_task(encoder: Encoder, task: Task) -> tuple[Encoder, Task]:
    """The encoder and task to evaluate.

    A task that declares what its sides show (`TaskMetadata.views`) hands that data to an encoder with
    `for_views` (MML-CLIP's heads); the encoder never sees the task. E5-V's per-category FashionIQ prompts
    and caption joining still rewrite the task's items in its `for_task(task)`. Whatever either changes in
    a vector must be in the items' content and the encoder's fingerprint, and what it changes in the
    protocol in the returned task's protocol, so results and caches record it.
    """
    views = getattr(encoder, "for_views", None)
    if task.metadata.views and callable(views):
        encoder = views(dict(task.metadata.views))
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
