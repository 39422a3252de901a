"""Find result files, read the citation file of published numbers, and group both into boards.

A board is one table's worth of rows: one task and split under one protocol. Results that `incompatibilities`
says differ (protocol fields, dataset revision, query limit) never share a board: each variant gets its own
board, flagged with how it differs from the benchmark's first one (the MTEB lesson: rows from re-uploaded
datasets or other prompts must not sit in one column unnoticed).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirbench.compare import incompatibilities
from cirbench.core.metrics import parse_metric
from cirbench.core.result import Result
from cirbench.core.types import DatasetError

REPORTED_REQUIRED = ("method", "backbone", "task", "split", "metric", "value", "source")
REPORTED_OPTIONAL = ("protocol", "note", "source_class", "circo_text", "fashioniq_gallery", "cirr_reference")
BREAKDOWN_ORDER = ("category", "subcategory", "aspect")

SOURCE_CLASSES = {
    "primary": "reported",
    "cited": "cited",
    "secondary": "secondary, unchecked",
}
"""How a published number is known -> its badge. primary: the method's own paper, code or figure; cited: as
printed in another paper's own table (a transcription by that paper's authors); secondary: a third party's
transcription (AI notes, aggregators), not checked against the paper. Each class is shown apart."""

UNSTATED = "unstated"
PROTOCOL_FLAGS = {
    "circo_text": ("circo", 0, "CIRCO query text"),
    "fashioniq_gallery": ("fashioniq", 0, "FashionIQ gallery"),
    "cirr_reference": ("cirr", 0, "CIRR reference"),
}
"""Flag column -> (task, axis of that task's protocol variants, label). The value is the axis choice the
paper used (a cirbench protocol token, e.g. shared-concept) or "unstated"; it must agree with `protocol`."""


@dataclass(frozen=True)
class Reported:
    """A published number copied from a paper: shown, never tested, never mixed up with computed ones."""

    method: str
    backbone: str
    task: str
    split: str
    metric: str
    value: float
    """A fraction like cirbench's scores (the file holds percentages, as papers print them); MedR a rank."""
    source: str
    protocol: str = "official"
    note: str = ""
    source_class: str = "primary"
    """A key of SOURCE_CLASSES."""
    flags: tuple[tuple[str, str], ...] = ()
    """(flag column, value) for the protocol flags of PROTOCOL_FLAGS that apply to this row's task."""

    @property
    def label(self) -> str:
        return f"{self.method} ({self.backbone})" if self.backbone else self.method

    @property
    def flags_text(self) -> str:
        """e.g. "CIRCO query text: shared-concept" (empty for tasks without protocol flags)."""
        return "; ".join(f"{PROTOCOL_FLAGS[k][2]}: {v}" for k, v in self.flags)


@dataclass
class Board:
    """One task/split under one protocol: computed results and reported rows that may share its columns."""

    task: str
    split: str
    variant: int = 1
    protocol: dict[str, Any] | None = None
    task_info: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    reported: list[Reported] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    """Why this board is separate from the benchmark's first one, or why its rows need care."""

    @property
    def slug(self) -> str:
        base = _slug(f"{self.task}-{self.split}")
        return base if self.variant == 1 else f"{base}-v{self.variant}"

    @property
    def protocol_name(self) -> str:
        if self.protocol is not None:
            return str(self.protocol.get("name", "?"))
        return self.reported[0].protocol if self.reported else "?"

    @property
    def metrics(self) -> list[str]:
        """The protocol's metrics, then any metric only a reported row has."""
        out = list(self.protocol.get("metrics", [])) if self.protocol else []
        if not out:
            for r in self.results:
                out += [m for m in r.overall if m not in out]
        out += [m for m in dict.fromkeys(r.metric for r in self.reported) if m not in out]
        return out

    @property
    def main_metric(self) -> str:
        if self.results:
            return self.results[0].main_metric
        return self.reported[0].metric if self.reported else ""

    @property
    def breakdowns(self) -> list[str]:
        kinds = {k for r in self.results for k in r.breakdown_kinds()}
        return [k for k in BREAKDOWN_ORDER if k in kinds] + sorted(kinds - set(BREAKDOWN_ORDER))

    @property
    def separates(self) -> str:
        """What sets this board apart from the benchmark's other boards, in a few words (for the index)."""
        parts = [f"protocol {self.protocol_name}"]
        limit = self.task_info.get("limit")
        if limit is not None:
            parts.append(f"smoke run: first {limit} queries only")
        if self.protocol is None:
            parts.append("reported numbers only")
        prefix = "not comparable with variant 1: "
        for f in self.flags:
            if f.startswith(prefix) and not f.startswith(prefix + "task limit") \
                    and not f.startswith(prefix + "protocol name"):
                parts.append(f.removeprefix(prefix))
        return "; ".join(parts)

    def groups(self, kind: str) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.results:
            seen.update(dict.fromkeys(r.scores.get(kind, {})))
        return list(seen)


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.")
    return out or "board"


def lower_is_better(metric: str) -> bool:
    try:
        return parse_metric(metric).kind == "medr"
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------


def find_result_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """result.json files: each path is a file, or a directory searched recursively; sorted, deduplicated."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            hits = sorted(q for q in p.rglob("result.json") if q.is_file())
            if not hits:
                raise DatasetError("no result.json under this directory", file=p)
            found.update(dict.fromkeys(hits))
        elif p.is_file():
            found[p] = None
        else:
            raise DatasetError("result path does not exist", file=p)
    return list(found)


def load_results(files: Sequence[Path]) -> tuple[list[Result], list[tuple[Path, str]]]:
    """Readable results with scores, and (path, reason) for those a leaderboard cannot show."""
    results, skipped = [], []
    for f in files:
        try:
            r = Result.read(f)
        except (DatasetError, KeyError, TypeError, ValueError, AttributeError) as e:
            # one broken file must not take the whole board down: skip it and say why
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            skipped.append((f, f"unreadable result file: {type(e).__name__}: {msg}"))
            continue
        if not r.overall:
            skipped.append((f, "no scores (unlabelled split: scored by the benchmark's server)"))
            continue
        results.append(r)
    return results, skipped


def load_reported(path: str | os.PathLike[str]) -> list[Reported]:
    """Rows of the citation file: CSV with a header, `#` lines are comments, values in % (MedR a rank)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError as e:
        raise DatasetError("reported-numbers file is missing", file=path) from e
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()
                and not line.lstrip().startswith("#")]
    if not numbered:
        raise DatasetError("reported-numbers file has no header", file=path)
    reader = csv.DictReader(io.StringIO("".join(line for _, line in numbered)))
    header = [h.strip() for h in reader.fieldnames or []]
    for col in REPORTED_REQUIRED:
        if col not in header:
            raise DatasetError("required column is missing", file=path, field=col)
    out = []
    for (line_no, _), row in zip(numbered[1:], reader, strict=False):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"line {line_no}"
        for col in ("method", "task", "split", "metric", "value", "source"):
            if not row.get(col):
                raise DatasetError("value is empty", file=path, record=where, field=col)
        try:
            metric = parse_metric(row["metric"]).name
        except ValueError as e:
            raise DatasetError(str(e), file=path, record=where, field="metric") from e
        try:
            value = float(row["value"])
        except ValueError as e:
            raise DatasetError(f"not a number: {row['value']!r}", file=path, record=where,
                               field="value") from e
        if not math.isfinite(value):
            raise DatasetError("value must be finite", file=path, record=where, field="value")
        source_class = row.get("source_class") or "primary"
        if source_class not in SOURCE_CLASSES:
            raise DatasetError(f"unknown source class {source_class!r}; one of {sorted(SOURCE_CLASSES)}",
                               file=path, record=where, field="source_class")
        protocol = row.get("protocol") or "official"
        flags = _protocol_flags(row, protocol, file=path, record=where)
        out.append(Reported(method=row["method"], backbone=row.get("backbone", ""), task=row["task"],
                            split=row["split"], metric=metric,
                            value=value if lower_is_better(metric) else value / 100.0,
                            source=row["source"], protocol=protocol,
                            note=row.get("note", ""), source_class=source_class, flags=flags))
    return out


def _protocol_flags(row: dict[str, str], protocol: str, *, file: Path, record: str
                    ) -> tuple[tuple[str, str], ...]:
    """The row's protocol flags: "unstated" when empty; a stated choice must be the one `protocol` makes."""
    from cirbench.tasks import circo, cirr, fashioniq
    from cirbench.tasks._files import parse_variant

    axes = {"circo": circo.AXES, "cirr": cirr.AXES, "fashioniq": fashioniq.AXES}
    out = []
    for col, (task, axis, _label) in PROTOCOL_FLAGS.items():
        value = row.get(col, "")
        if row["task"] != task:
            if value:
                raise DatasetError(f"this flag applies to {task} rows only", file=file, record=record,
                                   field=col)
            continue
        value = value or UNSTATED
        choices = axes[task][axis]
        if value != UNSTATED and value not in choices:
            raise DatasetError(f"unknown value {value!r}; one of {[*choices, UNSTATED]}", file=file,
                               record=record, field=col)
        try:
            chosen = parse_variant(protocol, axes[task])[axis]
        except ValueError as e:
            raise DatasetError(str(e), file=file, record=record, field="protocol") from e
        if value not in (UNSTATED, chosen):
            raise DatasetError(f"{value!r} disagrees with protocol {protocol!r}, which uses {chosen!r}",
                               file=file, record=record, field=col)
        out.append((col, value))
    return tuple(out)


# ------------------------------------------------------------------------------------------------------
# Grouping
# ------------------------------------------------------------------------------------------------------


def group_boards(results: Sequence[Result], reported: Sequence[Reported] = ()) -> list[Board]:
    """Boards in task/split order; within a benchmark, one board per protocol variant, first seen first."""
    by_bench: dict[tuple[str, str], list[Board]] = {}
    for r in sorted(results, key=lambda r: (str(r.task.get("name")), str(r.task.get("split")))):
        key = (str(r.task.get("name")), str(r.task.get("split")))
        boards = by_bench.setdefault(key, [])
        home = next((b for b in boards if not incompatibilities(b.results[0], r)), None)
        if home is None:
            home = Board(task=key[0], split=key[1], variant=len(boards) + 1, protocol=r.protocol,
                         task_info=dict(r.task))
            if boards:
                home.flags = [f"not comparable with variant 1: {p}"
                              for p in incompatibilities(boards[0].results[0], r)]
            boards.append(home)
        home.results.append(r)
    for boards in by_bench.values():
        for b in boards:
            b.labels = _labels(b.results)
            if b.task_info.get("limit") is not None:
                b.flags.append(f"smoke run: only the first {b.task_info['limit']} queries were scored")
    for rep in reported:
        boards = by_bench.setdefault((rep.task, rep.split), [])
        home = next((b for b in boards if _accepts(b, rep)), None)
        if home is None:
            home = Board(task=rep.task, split=rep.split, variant=len(boards) + 1)
            home.flags = ["reported numbers only: no cirbench result under this protocol"
                          + (" (see the other variants of this benchmark)" if boards else "")]
            boards.append(home)
        home.reported.append(rep)
    return [b for key in sorted(by_bench) for b in by_bench[key]]


def _accepts(board: Board, rep: Reported) -> bool:
    """Published numbers join a board of full runs under the protocol they were reported with."""
    if board.protocol is None:
        return board.protocol_name == rep.protocol
    return board.protocol.get("name") == rep.protocol and board.task_info.get("limit") is None


def _labels(results: Sequence[Result]) -> list[str]:
    """Model names (with their re-ranker, if any), made unique within a board (a re-run, another seed)."""
    names = [str(r.model.get("name") or r.model.get("id") or "?") + _rerank_suffix(r.protocol)
             for r in results]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n} #{seen[n]}")
    return out


def _rerank_suffix(protocol: dict[str, Any]) -> str:
    """" + soft (soft, λ=1.0)" for a re-ranked run, so it never reads as the plain model."""
    rr = protocol.get("rerank")
    if isinstance(rr, list):  # a chain (XR's question agents, then its pairwise check): each in turn
        return "".join(_rerank_suffix({"rerank": r}) for r in rr if isinstance(r, dict))
    info = rr if isinstance(rr, dict) else protocol
    name = info.get("rerank") if isinstance(rr, dict) else rr
    if not name:
        return ""
    details = [str(info["mode"])] if info.get("mode") else []
    if info.get("lambda") is not None:
        details.append(f"λ={info['lambda']}")
    return f" + {name}" + (f" ({', '.join(details)})" if details else "")
