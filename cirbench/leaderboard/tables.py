"""Every number of a board as cells (the long table behind the CSV/parquet) and the Markdown tables.

A cell is one value of one row (a computed result or a reported number) for one metric in one group
(overall, or a category / subcategory / aspect). For the cells the tables show (every overall metric, and
the main metric per group) the best computed row is found and every other computed row is tested against
it; `tie` is True when the paired test does not support a difference (p >= alpha).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cirbench.core.markdown import escape as md_escape
from cirbench.leaderboard.collect import SOURCE_CLASSES, Board, lower_is_better
from cirbench.leaderboard.ties import PairedTester

ALPHA = 0.05
TIE_MARK = "≈"
UNTESTED_MARK = "?"


@dataclass
class Cell:
    board: str
    task: str
    split: str
    variant: int
    protocol: str
    row: str
    """The row's label: the model name (made unique within the board) or "method (backbone)"."""
    row_kind: str
    """"computed" (by cirbench, from a result file) or "reported" (copied from a paper)."""
    model: str
    model_id: str
    breakdown: str
    group: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    best: bool = False
    tie: bool | None = None
    """Not significantly different from the best (None: untested, e.g. a reported row or no run file)."""
    p_value: float | None = None
    test_note: str = ""
    source: str = ""
    note: str = ""
    result_path: str = ""
    source_class: str = ""
    """For reported rows: primary, cited or secondary (collect.SOURCE_CLASSES)."""
    flags: str = ""
    """For reported rows: the paper's protocol flags (CIRCO text, FashionIQ gallery, CIRR reference)."""


def board_cells(board: Board, tester: PairedTester, *, alpha: float = ALPHA,
                root: Path | None = None) -> list[Cell]:
    """All cells of a board, with best/tie marks on the cells its tables show."""
    cells: list[Cell] = []
    base: dict[str, Any] = {"board": board.slug, "task": board.task, "split": board.split,
                            "variant": board.variant, "protocol": board.protocol_name}
    for label, r in zip(board.labels, board.results, strict=True):
        where = _relative(r.path, root)
        common: dict[str, Any] = {**base, "row": label, "row_kind": "computed",
                                  "model": str(r.model.get("name", "")),
                                  "model_id": str(r.model.get("id", "")), "result_path": where}
        for kind, groups in r.scores.items():
            for group, scores in groups.items():
                for metric, s in scores.items():
                    cells.append(Cell(**common, breakdown=kind, group=group, metric=metric,
                                      value=_num(s.value), ci_low=_opt(s.ci_low), ci_high=_opt(s.ci_high),
                                      n=s.n))
    for rep in board.reported:
        cells.append(Cell(**base, row=rep.label, row_kind="reported", model=rep.method, model_id=rep.backbone,
                          breakdown="overall", group="overall", metric=rep.metric, value=rep.value,
                          source=rep.source, note=rep.note, test_note="reported: not tested",
                          source_class=rep.source_class, flags=rep.flags_text))
    _mark(board, cells, tester, alpha)
    return cells


def _mark(board: Board, cells: list[Cell], tester: PairedTester, alpha: float) -> None:
    by_label = dict(zip(board.labels, board.results, strict=True))
    shown = {("overall", m) for m in board.metrics}
    shown |= {(k, board.main_metric) for k in board.breakdowns}
    columns: dict[tuple[str, str, str], list[Cell]] = {}
    for c in cells:
        if c.row_kind == "computed" and (c.breakdown, c.metric) in shown and math.isfinite(c.value):
            columns.setdefault((c.breakdown, c.group, c.metric), []).append(c)
    for (kind, group, metric), col in columns.items():
        pick = min if lower_is_better(metric) else max
        best = pick(col, key=lambda c: c.value)  # the first of equal values: board order
        best.best = True
        for c in col:
            if c is best:
                continue
            t = tester.test(by_label[best.row], by_label[c.row], metric, kind, group)
            c.p_value, c.test_note = t.p_value, t.note
            c.tie = None if t.p_value is None else t.p_value >= alpha


def _relative(path: Path | None, root: Path | None) -> str:
    if path is None:
        return ""
    if root is None:
        return str(path)
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _opt(v: float | None) -> float | None:
    return None if v is None or v != v else float(v)


def cells_frame(cells: Sequence[Cell]) -> pd.DataFrame:
    """The long table of every number (CSV and parquet), with stable column types."""
    cols = list(Cell.__dataclass_fields__)
    frame = pd.DataFrame([asdict(c) for c in cells], columns=cols)
    for col in ("value", "ci_low", "ci_high", "p_value"):
        frame[col] = frame[col].astype("float64")
    frame["n"] = frame["n"].astype("Int64")
    frame["tie"] = frame["tie"].astype("boolean")
    frame["best"] = frame["best"].astype("bool")
    frame["variant"] = frame["variant"].astype("int64")
    return frame


# ------------------------------------------------------------------------------------------------------
# Formatting shared by Markdown and HTML
# ------------------------------------------------------------------------------------------------------


def fmt_value(value: float, metric: str) -> str:
    if value != value:
        return "–"
    return f"{value:.1f}" if lower_is_better(metric) else f"{100 * value:.2f}"


def fmt_ci(c: Cell) -> str:
    if c.ci_low is None or c.ci_high is None:
        return ""
    return f"[{fmt_value(c.ci_low, c.metric)}, {fmt_value(c.ci_high, c.metric)}]"


def mark(c: Cell) -> str:
    if c.row_kind != "computed" or c.best:
        return ""
    if c.tie is None:
        return UNTESTED_MARK if c.test_note.startswith("untested") else ""
    return TIE_MARK if c.tie else ""


Lookup = dict[tuple[str, str, str, str, str], Cell]
"""(row_kind, row, breakdown, group, metric) -> Cell."""


def row_order(board: Board, lookup: Lookup) -> list[tuple[str, str]]:
    """(label, kind) rows sorted by the overall main metric, best first; rows without it go last."""
    rows = [(label, "computed") for label in board.labels]
    rows += [(label, "reported") for label in dict.fromkeys(r.label for r in board.reported)]
    metric = board.main_metric
    sign = 1.0 if lower_is_better(metric) else -1.0

    def key(row: tuple[str, str]) -> tuple[int, float]:
        c = lookup.get((row[1], row[0], "overall", "overall", metric))
        if c is None or c.value != c.value:
            return (1, 0.0)
        return (0, sign * c.value)

    return sorted(rows, key=key)


def lookup_cells(cells: Sequence[Cell]) -> Lookup:
    return {(c.row_kind, c.row, c.breakdown, c.group, c.metric): c for c in cells}


LEGEND = (f"Values in %, MedR in ranks. Brackets: 95% percentile-bootstrap interval over queries. Bold: "
          f"the best row computed by cirbench. {TIE_MARK}: not significantly different from the best (paired "
          f"test on the queries both runs scored, p ≥ {ALPHA}); no mark: significantly below the best; "
          f"{UNTESTED_MARK}: untested (a run.parquet is missing or the metric cannot be paired). "
          "Rows marked *reported* are copied from the papers (see the sources), not computed by cirbench: "
          "they carry no interval and are never tested.")
REPORTED_POLICY = (
    "Reported rows come from `leaderboards/reported.csv`. Rows marked *reported* are taken from the "
    "method's own paper, code or figures; rows marked *cited* are a method's numbers as printed in another "
    "paper's own table (a transcription by that paper's authors), shown apart. Numbers known only from "
    "secondary sources (AI-written paper notes, review sites, aggregators: the [2nd] rows of the research "
    "notes) and unverified ones are left out until someone checks them in the PDFs; a file that lists such "
    "rows marks them *secondary, unchecked*. Each row states the protocol the paper ran where it matters "
    "(CIRCO query text, FashionIQ gallery, CIRR reference exclusion), or *unstated*.")


# ------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------


def board_markdown(board: Board, cells: Sequence[Cell]) -> str:
    """The board's overall table and one table per breakdown (main metric), with notes and sources."""
    lookup = lookup_cells(cells)
    rows = row_order(board, lookup)
    title = f"{md_escape(board.task)} / {md_escape(board.split)}: protocol {md_escape(board.protocol_name)}"
    lines = [f"# {title}", ""]
    if board.variant > 1:
        lines += [f"Protocol variant {board.variant} of this benchmark: its numbers are not comparable with "
                  "the other variants' tables.", ""]
    lines += [f"- ⚠ {md_escape(f)}" for f in board.flags]
    if board.flags:
        lines.append("")
    if board.protocol:
        fields = "; ".join(f"{k} = {md_escape(_short(v))}" for k, v in protocol_fields(board))
        lines += [f"Protocol: {fields}", ""]
    sources: dict[str, int] = {}
    lines += ["## Overall", ""]
    header = ["model", "kind", *board.metrics]
    body = [_md_row(board, label, kind, board.metrics, lookup, sources) for label, kind in rows]
    lines += _md_table(header, body, n_left=2)
    for kind in board.breakdowns:
        groups = board.groups(kind)
        metric = board.main_metric
        lines += ["", f"## Per {md_escape(kind)} ({md_escape(metric)})", ""]
        body = []
        for label, row_kind in rows:
            if row_kind != "computed":
                continue
            cells_ = [_md_cell(lookup.get((row_kind, label, "overall", "overall", metric)))]
            cells_ += [_md_cell(lookup.get((row_kind, label, kind, g, metric))) for g in groups]
            body.append([md_escape(label), *cells_])
        lines += _md_table(["model", "overall", *map(md_escape, groups)], body, n_left=1)
    lines += ["", LEGEND]
    if sources:
        lines += ["", "Sources of reported rows:", ""]
        lines += [f"{i}. {md_escape(s)}" for s, i in sources.items()]
        notes = [r for r in board.reported if r.note]
        if notes:
            lines += ["", "Notes on reported rows:", ""]
            lines += [f"- {md_escape(r.label)}, {md_escape(r.metric)}: {md_escape(r.note)}" for r in notes]
        flagged = {r.label: r.flags_text for r in board.reported if r.flags_text}
        if flagged:
            lines += ["", "Protocol flags of reported rows (as the papers ran them):", ""]
            lines += [f"- {md_escape(label)}: {md_escape(text)}" for label, text in flagged.items()]
    return "\n".join(lines) + "\n"


def protocol_fields(board: Board) -> list[tuple[str, object]]:
    from cirbench.compare import PROTOCOL_FIELDS

    p = board.protocol or {}
    out: list[tuple[str, object]] = [(k, p.get(k)) for k in PROTOCOL_FIELDS if k not in ("notes", "scorer")]
    scorer = p.get("scorer") or {}
    out.append(("scorer", scorer.get("name", "generic") if isinstance(scorer, dict) else scorer))
    out += [("dataset revision", board.task_info.get("revision")),
            ("queries", board.task_info.get("num_queries")),
            ("gallery size", board.task_info.get("num_corpus"))]
    return out


def _short(v: object, limit: int = 160) -> str:
    s = ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _md_row(board: Board, label: str, kind: str, metrics: Sequence[str], lookup: Lookup,
            sources: dict[str, int]) -> list[str]:
    if kind == "reported":
        mine = [r for r in board.reported if r.label == label]
        refs = sorted({sources.setdefault(r.source, len(sources) + 1) for r in mine})
        tag = f"*{SOURCE_CLASSES[mine[0].source_class]}* " + " ".join(f"[{i}]" for i in refs)
    else:
        tag = "computed"
    return [md_escape(label), tag,
            *[_md_cell(lookup.get((kind, label, "overall", "overall", m))) for m in metrics]]


def _md_cell(c: Cell | None) -> str:
    if c is None or c.value != c.value:
        return "–"
    v = fmt_value(c.value, c.metric)
    if c.row_kind == "reported":
        return f"*{v}*"
    text = f"**{v}**" if c.best else v
    ci = fmt_ci(c)
    return " ".join(p for p in (text, ci, mark(c)) if p)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, n_left: int) -> list[str]:
    align = ["---"] * n_left + ["---:"] * (len(header) - n_left)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def index_markdown(boards: Sequence[Board], skipped: Sequence[tuple[str, str]]) -> str:
    lines = ["# cirbench leaderboard", "",
             "| benchmark | protocol | what separates it | computed rows | reported rows | table |",
             "|---|---|---|---:|---:|---|"]
    for b in boards:
        lines.append(f"| {md_escape(b.task)} / {md_escape(b.split)} | {md_escape(b.protocol_name)}"
                     f"{' ⚠' if b.flags else ''} | {md_escape(b.separates)} | {len(b.results)} | "
                     f"{len(b.reported)} | [{b.slug}.md]({b.slug}.md) |")
    lines += ["", "The page `index.html` shows the same tables (sortable), per-group charts, each model's "
              "metadata and each table's protocol; `leaderboard.csv` / `leaderboard.parquet` hold every "
              "number.",
              "", "## Reported numbers", "", REPORTED_POLICY, "", LEGEND]
    if skipped:
        lines += ["", "## Skipped result files", ""]
        lines += [f"- {md_escape(p)}: {md_escape(why)}" for p, why in skipped]
    return "\n".join(lines) + "\n"
