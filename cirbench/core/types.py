"""The core vocabulary: Item, Query, Protocol, Task.

A Task is pure data once loaded: loaders turn file formats into these types, encoders turn Items into
vectors, search turns vectors into a Run, metrics turn a Run into a Result. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from cirbench.core.protocol import AGGREGATES, Aggregate, Protocol

__all__ = ["AGGREGATES", "MODALITIES", "Aggregate", "DatasetError", "ImageRef", "Item", "Protocol", "Query",
           "Role", "RunColumns", "Task", "TaskMetadata", "positions", "query_exclusions"]

Role = Literal["query", "document"]
"""Which side of retrieval an Item is encoded for; part of every cache key."""

MODALITIES = ("image", "text", "image+text")

RunColumns = Callable[["Task", np.ndarray], Mapping[str, list[Any]]]
"""(task, the run's (Q, K) corpus positions, best first, -1 pads) -> the task's own run.parquet columns,
one value per query (CIRCO's annotated target and semantic aspects, a geo task's predicted GPS)."""


class DatasetError(ValueError):
    """Bad input data: the message names the file, the record and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike[str] | None = None,
        record: str | int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(f"file {os.fspath(file)!r}")
        if record is not None:
            where.append(f"record {record!r}")
        if field is not None:
            where.append(f"field {field!r}")
        # The file, record and field go on the first line: a layout or hint may follow on the next ones.
        head, sep, rest = message.partition("\n")
        super().__init__(head + (f" ({', '.join(where)})" if where else "") + sep + rest)
        self.file, self.record, self.field = file, record, field
        self.message = message


ImageRef = Path | bytes
"""An image on disk (absolute path) or encoded image bytes (PNG/JPEG) held in memory."""


@dataclass(frozen=True)
class Item:
    """What gets embedded: an image, a text, or both (a composed query)."""

    id: str
    image: ImageRef | None = None
    text: str | None = None
    caption: str | None = None
    """Auxiliary text about a gallery image (a benchmark's caption); only caption-based baselines read it."""

    @property
    def modality(self) -> str:
        if self.image is not None and self.text is not None:
            return "image+text"
        return "image" if self.image is not None else "text"

    def load_image(self) -> Image.Image:
        """Decode the image as RGB; a missing or corrupt file raises DatasetError naming it."""
        if self.image is None:
            raise DatasetError("item has no image", record=self.id, field="image")
        try:
            if isinstance(self.image, bytes):
                img = Image.open(io.BytesIO(self.image))
            else:
                img = Image.open(self.image)
            img.load()
        except FileNotFoundError as e:
            raise DatasetError(
                "image file is missing",
                file=self.image if isinstance(self.image, Path) else None,
                record=self.id,
                field="image",
            ) from e
        except OSError as e:
            raise DatasetError(
                f"image cannot be decoded: {e}",
                file=self.image if isinstance(self.image, Path) else None,
                record=self.id,
                field="image",
            ) from e
        return img.convert("RGB")

    def content_key(self) -> str:
        """A short hash of what the Item contains, for the embedding cache: exactly this, and no more.

        Text and caption are hashed whole, and so are inline image bytes. An image *file* is fingerprinted by
        its resolved absolute path (symlinks and `..` resolved, so `--data-dir cirr` and `/data/cirr` give
        the same key), its size and its mtime, so that a second run over a 123k-image gallery does not
        re-read every file just to look up the cache. A copied, moved or touched file therefore gets a new
        key and is encoded again; a file rewritten in place with the same size and mtime is not noticed.
        """
        h = hashlib.sha1()
        if isinstance(self.image, bytes):
            h.update(b"bytes:")
            h.update(self.image)
        elif isinstance(self.image, Path):
            resolved = os.path.realpath(self.image)
            try:
                st = os.stat(resolved)
                h.update(f"file:{resolved}:{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"file:{resolved}:missing".encode())
        for name, value in (("text", self.text), ("caption", self.caption)):
            h.update(f"\x00{name}:".encode())
            if value is not None:
                h.update(value.encode())
        return h.hexdigest()[:24]


@dataclass(frozen=True)
class Query:
    """One CIR query: the composed Item plus what counts as a right answer."""

    id: str
    item: Item
    relevant_ids: tuple[str, ...] = ()
    reference_id: str | None = None
    candidate_ids: tuple[str, ...] | None = None
    """Restricts a second ranking to these corpus ids (CIRR's img_set for Recall_subset)."""
    exclude_ids: tuple[str, ...] = ()
    """Corpus ids never returned for this query (the reference image where the protocol says so)."""
    category: str | None = None
    subcategory: str | None = None
    alt_items: tuple[Item, ...] = ()
    """Other phrasings whose vectors are averaged with the main one (FashionIQ's both-orders captions)."""
    hard_negative_ids: tuple[str, ...] = ()
    gallery: str | None = None
    """Name of the sub-gallery this query searches (Task.galleries), e.g. FashionIQ's per-category gallery."""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskMetadata:
    """Facts about a benchmark that are data, not code (as in mteb's TaskMetadata)."""

    name: str
    description: str = ""
    source: str = ""
    license: str = "unknown"
    citation: str = ""
    query_modality: str = "image+text"
    corpus_modality: str = "image"
    taxonomy: Mapping[str, str] = field(default_factory=dict)
    """subcategory -> main category, for per-category aggregation."""
    pitfalls: tuple[str, ...] = ()
    instructions: Mapping[str, str] = field(default_factory=dict)
    """Default instruction per role ("query", "document") for instruction-following models."""
    views: Mapping[str, str] = field(default_factory=dict)
    """What each side's inputs show, per role ("query", "document"): "ground", "satellite", "text" or
    "gps". Models with one head per kind of input (MML-CLIP) take it through `for_views`; empty: the
    model's default."""


@dataclass
class Task:
    """A named benchmark split: queries, corpus and protocol. Pure data once loaded."""

    metadata: TaskMetadata
    split: str
    queries: list[Query]
    corpus: list[Item]
    protocol: Protocol = field(default_factory=Protocol)
    revision: str | None = None
    """Dataset revision (a hash of the manifests, a hub commit, or a release tag)."""
    has_labels: bool = True
    """False for test splits scored by a server (CIRR test1, CIRCO test)."""
    galleries: dict[str, list[str]] | None = None
    """Named sub-galleries (corpus ids). A query with `gallery` set is ranked only within that one;
    None means every query searches the whole corpus."""
    corpus_frames: Mapping[str, Sequence[Item]] | None = None
    """Video targets: corpus id -> its frame Items, whose vectors are averaged into the item's vector
    (`cirbench.core.video.expand_corpus`); a corpus item without frames stands for itself."""
    corpus_frame_weights: Mapping[str, Sequence[float]] | None = None
    """Weights of each corpus item's frames in that average (default: equal)."""
    gps: np.ndarray | None = None
    """Geolocalisation: (N, 2) latitude, longitude of each corpus item, aligned with `corpus`."""
    run_columns: RunColumns | None = None
    """The task's own run.parquet columns (see RunColumns), beside the generic ones of cirbench.core.run."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Facts about the loaded files for people and provenance (dataset_dir and version are recorded in
    the result; `limit` is set by `limit()`); nothing scores from them."""

    @property
    def name(self) -> str:
        return self.metadata.name

    def __post_init__(self) -> None:
        self._positions: dict[str, int] | None = None

    @property
    def corpus_positions(self) -> dict[str, int]:
        """Corpus id -> row position (built once)."""
        if self._positions is None:
            self._positions = {it.id: i for i, it in enumerate(self.corpus)}
        return self._positions

    def limit(self, n: int | None) -> Task:
        """The first n queries (a smoke run); the corpus stays whole so scores stay comparable in kind."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"--limit must be a whole number of queries, at least 1 (got {n!r})")
        if n is None or n >= len(self.queries):
            return self
        return replace(self, queries=self.queries[:n],
                       extra={**self.extra, "limit": n, "queries_before_limit": len(self.queries)})

    def validate(self) -> None:
        """Check ids before any encoding: a bad id must fail in seconds, not after an hour of GPU time."""
        if not self.queries:
            raise DatasetError(f"split {self.split!r} of task {self.name!r} has no queries")
        if not self.corpus:
            raise DatasetError(f"split {self.split!r} of task {self.name!r} has an empty corpus")
        pos = self.corpus_positions
        if len(pos) != len(self.corpus):
            seen: set[str] = set()
            for it in self.corpus:
                if it.id in seen:
                    raise DatasetError("duplicate corpus id", record=it.id, field="id")
                seen.add(it.id)
        qids: set[str] = set()
        for q in self.queries:
            if q.id in qids:
                raise DatasetError("duplicate query id", record=q.id, field="id")
            qids.add(q.id)
            if q.gallery is not None and (self.galleries is None or q.gallery not in self.galleries):
                raise DatasetError(f"unknown gallery {q.gallery!r}", record=q.id, field="gallery")
            for fname, ids in (
                ("relevant_ids", q.relevant_ids),
                ("exclude_ids", q.exclude_ids),
                ("candidate_ids", q.candidate_ids or ()),
            ):
                for cid in ids:
                    if cid not in pos:
                        raise DatasetError(f"unknown corpus id {cid!r}", record=q.id, field=fname)


def query_exclusions(task: Task) -> list[list[int]]:
    """Corpus positions each query must never be ranked against, per the task's protocol."""
    pos = task.corpus_positions
    out: list[list[int]] = []
    for q in task.queries:
        ex = {pos[c] for c in q.exclude_ids}
        if task.protocol.exclude_reference and q.reference_id is not None and q.reference_id in pos:
            ex.add(pos[q.reference_id])
        out.append(sorted(ex))
    return out


def positions(task: Task, ids: Sequence[str]) -> list[int]:
    pos = task.corpus_positions
    return [pos[i] for i in ids]
