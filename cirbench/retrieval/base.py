"""The retrieval seam: a Retriever turns a Task into a Run, a Reranker turns a Run into a new Run.

`evaluate()` is load -> retrieve -> rerank* -> score -> write; everything a retrieval method needs beyond
the task comes in one `Context` (device, cache, batch size, progress, seed, the cost meter). A Retriever
sees the task only through its queries, corpus and protocol (exclusions, galleries, subsets); it never
computes a metric. A Reranker reorders only the first `depth` ids of each query and leaves the rest in the
base order (the tail rule, `TAIL_RULE`, recorded in every result). Neither changes the Run it is given.

New ones register with `register_retriever` / `register_reranker` (metadata as data, as Encoders do), so
adding one is one new module plus its registration (and a line in `cirbench.retrieval.registry`, which
imports the built-in ones and looks them up by name).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cirbench.core.run import Run
from cirbench.core.types import Task

SEARCH_DTYPES = ("float32", "bfloat16")
SEARCH_BACKENDS = ("torch", "faiss", "auto")
"""What `--search-dtype` and `--search-backend` accept (here, not in `search`, which imports torch)."""
TAIL_RULE = "ids below the reranker's depth keep the base run's order and scores, after the reranked head"


@dataclass
class Cost:
    """What a run spent, per stage: model calls, tokens, diffusion steps, seconds (a result field)."""

    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, stage: str, **amounts: float) -> None:
        """Add to a stage's counters, e.g. `cost.add("rewrite", lmm_calls=1, tokens_in=212)`."""
        counters = self.stages.setdefault(stage, {})
        for name, value in amounts.items():
            counters[name] = counters.get(name, 0.0) + float(value)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Count the wall seconds of a block under `stage`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, seconds=time.perf_counter() - t0)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {s: {k: round(v, 6) for k, v in c.items()} for s, c in self.stages.items()}


@dataclass
class Context:
    """The settings of one eval that are not the protocol's, as a retriever or reranker needs them."""

    top_k: int
    device: str = "cpu"
    batch_size: int = 32
    workers: int | None = None
    use_cache: bool = True
    cache_dir: Path | None = None
    progress: bool = True
    search_dtype: str = "float32"
    search_backend: str = "torch"
    seed: int = 0
    cost: Cost = field(default_factory=Cost)
    vectors: dict[Any, Any] = field(default_factory=dict)
    """Vectors computed during this eval, by who computed them for what: a reranker that scores the
    gallery with the retriever's own model reads them here instead of encoding the gallery again."""


@dataclass(frozen=True)
class ComponentSpec:
    """Registry metadata of a Retriever or Reranker: its name, what it is, the options it takes."""

    name: str
    description: str
    options: Mapping[str, str] = field(default_factory=dict)
    """option name -> one line: type, default and meaning (what `cirbench methods` / `--help` shows)."""
    required: tuple[str, ...] = ()
    """Options without a default: refused before anything runs when one is missing."""


@runtime_checkable
class Retriever(Protocol):
    """Task -> Run: the top-K corpus positions and scores of every query, per the task's protocol.

    A method whose later stages are rerankers (XR's question agents) lists them in an optional
    `rerankers` attribute: `evaluate()` runs them first in the chain, before any `--rerank`."""

    spec: ComponentSpec

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the Run (models, options, prompts): recorded in the result."""
        ...

    def prepare(self, task: Task) -> Task:
        """Refuse a task it cannot serve (before any work); return the task, adapted if it must be."""
        ...

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        """What the result's protocol records about how the run is made, known before any work."""
        ...

    def retrieve(self, task: Task, ctx: Context) -> Run: ...


@runtime_checkable
class Reranker(Protocol):
    """Run -> a new Run whose first `depth` ids per query are reordered; the rest follow TAIL_RULE."""

    spec: ComponentSpec
    depth: int | None
    """How many of the base run's ids it reorders (None: the whole run)."""

    def fingerprint(self) -> dict[str, Any]: ...

    def describe(self, task: Task, ctx: Context) -> dict[str, Any]:
        """What the result records about this reranker, known before any work."""
        ...

    def rerank(self, task: Task, run: Run, ctx: Context, base: Retriever) -> Run:
        """A new Run; `base` is the retriever that made the first one (a reranker may re-use its model)."""
        ...


def rerank_head(run: Run, depth: int | None, reorder: Callable[[Run], Run]) -> Run:
    """`reorder` applied to the first `depth` ids of every query; the rest follow `TAIL_RULE`.

    The one implementation of the tail rule: `reorder` sees a Run cut to the head and returns it reordered
    (it may change the scores and the subset ranking); the tail keeps the base order and scores, after the
    head. The rank of the first relevant item is the head's where it fell in the head, else unchanged.
    """
    width = run.indices.shape[1]
    d = width if depth is None else max(0, min(int(depth), width))
    head = replace(run, indices=run.indices[:, :d].copy(), scores=run.scores[:, :d].copy())
    new = reorder(head)
    if d == width:
        return new
    return replace(new, indices=np.concatenate([new.indices, run.indices[:, d:]], axis=1),
                   scores=np.concatenate([new.scores, run.scores[:, d:]], axis=1).astype(np.float32))


RetrieverFactory = Callable[..., Retriever]
RerankerFactory = Callable[..., Reranker]


@dataclass(frozen=True)
class _Entry:
    spec: ComponentSpec
    factory: Callable[..., Any]


_RETRIEVERS: dict[str, _Entry] = {}
_RERANKERS: dict[str, _Entry] = {}


def register_retriever(spec: ComponentSpec, factory: RetrieverFactory) -> ComponentSpec:
    _RETRIEVERS[spec.name] = _Entry(spec, factory)
    return spec


def register_reranker(spec: ComponentSpec, factory: RerankerFactory) -> ComponentSpec:
    _RERANKERS[spec.name] = _Entry(spec, factory)
    return spec


def _get(table: dict[str, _Entry], kind: str, name: str, options: Mapping[str, Any]) -> Any:
    from cirbench.core.options import check_options, did_you_mean

    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}{did_you_mean(name, table)}; "
                       f"available: {', '.join(sorted(table))}")
    entry = table[name]
    flag = f"--{kind}-option" if kind == "retriever" else "--rerank-option"
    check_options(f"{kind} {name!r}", options, entry.spec.options, flag=flag)
    missing = [o for o in entry.spec.required if o not in options]
    if missing:
        raise ValueError(f"{kind} {name!r} needs {', '.join(f'{flag} {o}=...' for o in missing)} "
                         f"({entry.spec.options.get(missing[0], '')})")
    return entry.factory(**options)
