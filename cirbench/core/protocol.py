"""How a benchmark is scored, as typed data.

Every rule a number depends on is a named field of `Protocol`, with the benchmark's official choice as the
default, and lands in each result's `protocol` record (`Protocol.to_dict`): which ids count for recall
(`recall_on`), which run columns a result is broken down by (`breakdowns`), and, where a benchmark's
released evaluator differs from the generic one, its own `scorer`. `notes` are documentation for people:
nothing reads them to compute a number.

A scorer is a plain function registered under a name (`register_scorer`); the record holds the name and
its parameters, so a result file read back is scored by the same function without naming any code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

Aggregate = Literal["queries", "categories"]
"""How a headline score is formed from per-query values: the mean over all queries, or the mean of the
per-category scores (FashionIQ averages dress, shirt and toptee, whatever their sizes)."""
AGGREGATES: tuple[str, ...] = ("queries", "categories")

RecallOn = Literal["relevant_ids", "target_id"]
"""Which run column holds the ids Recall@K looks for: every relevant id, or the single annotated target
(CIRCO: R@K counts `target_img_id` only while mAP uses every ground truth)."""
RECALL_ON: tuple[str, ...] = ("relevant_ids", "target_id")

DEFAULT_BREAKDOWNS: Mapping[str, str] = {"category": "category", "subcategory": "subcategory"}
"""Breakdown kind -> the run column holding each query's group (a name, or a list of names)."""

ScoreFn = Callable[..., "dict[str, np.ndarray]"]
"""fn(run_table, protocol_record, metric_names, **params) -> {metric name: per-query values}."""


@dataclass(frozen=True)
class Scorer:
    """A benchmark's own per-query scorer (where its released evaluator differs from the generic one)."""

    name: str
    fn: ScoreFn = field(compare=False, repr=False)
    params: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of `fn`; JSON values, recorded with the name."""

    def __call__(self, table: pa.Table, protocol: Mapping[str, Any], metrics: Sequence[str]
                 ) -> dict[str, np.ndarray]:
        return self.fn(table, protocol, metrics, **self.params)

    def with_params(self, **params: Any) -> Scorer:
        return replace(self, params={**self.params, **params})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


_SCORERS: dict[str, ScoreFn] = {}


def register_scorer(name: str, fn: ScoreFn) -> Scorer:
    """Register `fn` as the scorer `name` (a task module does this at import) and return it."""
    if name in _SCORERS and _SCORERS[name] is not fn:
        raise ValueError(f"scorer {name!r} is already registered")
    _SCORERS[name] = fn
    return Scorer(name, fn)


def scorer_from_record(record: Mapping[str, Any] | None) -> Scorer | None:
    """The registered scorer a protocol record names ({"name", "params"}), or None for the generic one."""
    if not record:
        return None
    name = str(record.get("name"))
    if name not in _SCORERS:
        known = ", ".join(sorted(_SCORERS)) or "none"
        raise ValueError(f"the protocol names scorer {name!r}, which no loaded task registers "
                         f"(registered: {known})")
    return Scorer(name, _SCORERS[name], dict(record.get("params") or {}))


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is scored. Official choices are the defaults; every field lands in the Result."""

    name: str = "official"
    metrics: tuple[str, ...] = ("R@1", "R@5", "R@10", "R@50", "mAP@10")
    main_metric: str = "R@1"
    top_k: int = 50
    """Depth of the stored run; every metric is computed from the top-k list (CIRCO: mAP on the top 50)."""
    ap_normaliser: str = "min(K,|G|)"
    exclude_reference: bool = True
    gallery: str = "corpus of the split"
    text_template: str = "{text}"
    """Applied to every query text before any model sees it (e.g. MagicLens-style joined texts)."""
    pseudo_token_template: str | None = None
    """The benchmark's zero-shot prompt for textual-inversion models ('$' / '*' mark the image token,
    e.g. SEARLE's "a photo of $ that {text}"); only pseudo-token adapters apply it."""
    caption_join: str | None = None
    aggregate: Aggregate = "queries"
    """"categories": every headline score is the mean of the per-category (Query.category) scores, and its
    interval resamples queries within each category; "queries": the mean over all queries."""
    recall_on: RecallOn = "relevant_ids"
    breakdowns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_BREAKDOWNS))
    """Breakdown kind -> run column; a result has scores per group of each kind present in the run."""
    scorer: Scorer | None = None
    """None: the generic scorer (cirbench.core.scoring)."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """Documentation only (sources, conventions, caveats): no number depends on them."""

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"protocol aggregate must be one of {list(AGGREGATES)}, not {self.aggregate!r}")
        if self.recall_on not in RECALL_ON:
            raise ValueError(f"protocol recall_on must be one of {list(RECALL_ON)}, not {self.recall_on!r}")

    def to_dict(self) -> dict[str, Any]:
        """The protocol record of a result: JSON values only."""
        return {
            "name": self.name, "metrics": list(self.metrics), "main_metric": self.main_metric,
            "top_k": self.top_k, "ap_normaliser": self.ap_normaliser,
            "exclude_reference": self.exclude_reference, "gallery": self.gallery,
            "text_template": self.text_template, "pseudo_token_template": self.pseudo_token_template,
            "caption_join": self.caption_join, "aggregate": self.aggregate, "recall_on": self.recall_on,
            "breakdowns": dict(self.breakdowns),
            "scorer": self.scorer.to_dict() if self.scorer is not None else None,
            "notes": dict(self.notes),
        }


LEGACY_BREAKDOWNS: Mapping[str, str] = {**DEFAULT_BREAKDOWNS, "aspect": "aspects"}
"""What results of schema 1.x were broken down by (fixed in code then)."""
_LEGACY_SCORERS = {"cirbench.tasks.mmlandmarks:per_query_values": "mmlandmarks-market1501"}


def upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A protocol record of schema 1.x in today's fields: the rules it kept in `notes` become fields.

    1.x named its scorer by import path (`notes.scorer`, with `notes.junk_prefix` for MMLandmarks'
    paper-code) and CIRCO's recall rule as `notes.recall_on`; its breakdowns were fixed in code.
    """
    d = dict(record)
    notes = dict(d.get("notes") or {})
    d.setdefault("recall_on", notes.get("recall_on") or "relevant_ids")
    d.setdefault("breakdowns", dict(LEGACY_BREAKDOWNS))
    if "scorer" not in d:
        path = notes.get("scorer")
        if path and path not in _LEGACY_SCORERS:
            raise ValueError(f"the protocol's notes.scorer {path!r} names no scorer cirbench knows")
        params = {"junk_prefix": notes["junk_prefix"]} if notes.get("junk_prefix") else {}
        d["scorer"] = {"name": _LEGACY_SCORERS[path], "params": params} if path else None
    return d


__all__ = [
    "AGGREGATES",
    "DEFAULT_BREAKDOWNS",
    "RECALL_ON",
    "Aggregate",
    "Protocol",
    "RecallOn",
    "Scorer",
    "register_scorer",
    "scorer_from_record",
    "upgrade_record",
]
