"""The static leaderboard page: sortable tables, charts, model metadata, each table's protocol.

The page is a Jinja2 template (`templates/index.html.j2`, autoescaped) filled from plain view objects built
here; its stylesheet and sorting script are package data inlined into the one file (see
`cirbench.templating`). Charts are drawn by matplotlib (`cirbench.plots`) as SVG and embedded as `data:`
images, so their ids cannot collide and nothing in them can run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cirbench
from cirbench.core.result import Result
from cirbench.leaderboard.collect import SOURCE_CLASSES, Board, lower_is_better
from cirbench.leaderboard.tables import (
    LEGEND,
    REPORTED_POLICY,
    Cell,
    Lookup,
    fmt_ci,
    fmt_value,
    lookup_cells,
    mark,
    protocol_fields,
    row_order,
)
from cirbench.templating import asset, content_security_policy, data_uri, environment

PACKAGE = "cirbench.leaderboard"


@dataclass
class Th:
    label: str
    title: str = ""
    sort: str = ""
    cls: str = ""


@dataclass
class Td:
    text: str
    data_v: str = ""
    title: str = ""
    ci: str = ""
    mark: str = ""
    best: bool = False


@dataclass
class Row:
    label: str
    kind: str
    """"computed", or the reported row's source class (primary, cited, secondary)."""
    cells: list[Td]
    badge: str = ""
    refs: list[int] = field(default_factory=list)
    notes: str = ""
    flags: str = ""


@dataclass
class Table:
    id: str
    title: str
    head: list[Th]
    rows: list[Row]
    kind_column: bool = False
    """The overall table has a "kind" column (computed / reported / cited / secondary)."""


@dataclass
class Chart:
    title: str
    src: str


@dataclass
class ModelInfo:
    label: str
    fields: list[tuple[str, str]]


@dataclass
class BoardView:
    slug: str
    heading: str
    protocol_name: str
    variant: int
    separates: str
    flags: list[str]
    protocol: list[tuple[str, str]] | None
    tables: list[Table]
    charts: list[Chart]
    sources: list[tuple[int, str]]
    models: list[ModelInfo]


def render_page(boards: Sequence[Board], cells: dict[str, list[Cell]], *,
                skipped: Sequence[tuple[str, str]] = (), test: dict[str, Any] | None = None) -> str:
    """The whole page; `cells` maps a board's slug to its cells (see tables.board_cells)."""
    script = asset(PACKAGE, "sort.js")
    views = [_board(b, cells.get(b.slug, [])) for b in boards]
    return environment(PACKAGE).get_template("index.html.j2").render(
        csp=content_security_policy(script), style=asset(PACKAGE, "leaderboard.css"), script=script,
        version=cirbench.__version__, n_results=sum(len(b.results) for b in boards),
        n_reported=sum(len(b.reported) for b in boards), legend=LEGEND, policy=REPORTED_POLICY, test=test,
        boards=views, skipped=list(skipped),
    )


def _board(b: Board, cells: list[Cell]) -> BoardView:
    lookup = lookup_cells(cells)
    rows = row_order(b, lookup)
    sources: dict[str, int] = {}
    for r in b.reported:
        sources.setdefault(r.source, len(sources) + 1)
    tables = [_overall_table(b, rows, lookup, sources)]
    tables += [_breakdown_table(b, kind, rows, lookup) for kind in b.breakdowns]
    paths = {c.row: c.result_path for c in cells if c.row_kind == "computed"}
    return BoardView(
        slug=b.slug, heading=f"{b.task} / {b.split}", protocol_name=b.protocol_name, variant=b.variant,
        separates=b.separates, flags=list(b.flags),
        protocol=None if b.protocol is None else _protocol(b),
        tables=tables, charts=charts(b, rows, lookup),
        sources=[(i, s) for s, i in sources.items()],
        models=[_model(label, r, paths.get(label)) for label, r in zip(b.labels, b.results, strict=True)],
    )


def _text(v: object) -> str:
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, ensure_ascii=False, default=str)
    return "–" if v is None else str(v)


def _protocol(b: Board) -> list[tuple[str, str]]:
    out = [(k, _text(v)) for k, v in protocol_fields(b)]
    notes = (b.protocol or {}).get("notes") or {}
    return out + [(f"note: {k}", _text(v)) for k, v in notes.items()]


def _column_title(b: Board, metric: str) -> str:
    if b.protocol is None or metric not in b.protocol.get("metrics", []):
        return f"{metric}: reported only (no cirbench result has this metric under this protocol)"
    p = b.protocol
    return (f"{metric} under protocol {p.get('name')}: gallery {p.get('gallery')}; exclude reference "
            f"{p.get('exclude_reference')}; AP normaliser {p.get('ap_normaliser')}; run depth "
            f"{p.get('top_k')}; text template {p.get('text_template')}; caption join {p.get('caption_join')}")


def _overall_table(b: Board, rows: list[tuple[str, str]], lookup: Lookup, sources: dict[str, int]) -> Table:
    main_sort = "ascending" if lower_is_better(b.main_metric) else "descending"
    head = [Th("model"), Th("kind", cls="kind")]
    head += [Th(m + (" ★" if m == b.main_metric else ""), _column_title(b, m),
                main_sort if m == b.main_metric else "") for m in b.metrics]
    body = []
    for label, kind in rows:
        tds = [_td(lookup.get((kind, label, "overall", "overall", m))) for m in b.metrics]
        if kind == "reported":
            mine = [r for r in b.reported if r.label == label]
            cls = mine[0].source_class
            body.append(Row(
                label=label, kind=cls, cells=tds, badge=SOURCE_CLASSES[cls],
                refs=sorted({sources[r.source] for r in mine}),
                notes="; ".join(f"{r.metric}: {r.note}" for r in mine if r.note),
                flags=mine[0].flags_text))
        else:
            body.append(Row(label=label, kind="computed", cells=tds))
    return Table(id=f"t-{b.slug}-overall", title="Overall", head=head, rows=body, kind_column=True)


def _breakdown_table(b: Board, kind: str, rows: list[tuple[str, str]], lookup: Lookup) -> Table:
    m = b.main_metric
    groups = b.groups(kind)
    title = _column_title(b, m)
    head = [Th("model"), Th("overall", title)] + [Th(g, f"{kind} {g}: {title}") for g in groups]
    body = []
    for label, row_kind in rows:
        if row_kind != "computed":
            continue
        tds = [_td(lookup.get((row_kind, label, "overall", "overall", m)))]
        tds += [_td(lookup.get((row_kind, label, kind, g, m))) for g in groups]
        body.append(Row(label=label, kind="computed", cells=tds))
    return Table(id=f"t-{b.slug}-{kind}", title=f"Per {kind} ({m})", head=head, rows=body)


def _td(c: Cell | None) -> Td:
    if c is None or c.value != c.value:
        return Td("–")
    v = fmt_value(c.value, c.metric)
    if c.row_kind == "reported":
        return Td(v, data_v=repr(c.value), title="reported in a paper; not computed by cirbench")
    tip = [f"n = {c.n}" if c.n else ""]
    if c.best:
        tip.append("best computed row")
    elif c.p_value is not None:
        tip.append(f"paired test vs best: p = {c.p_value:.3g}"
                   + (" (tie)" if c.tie else " (significantly different)"))
    elif c.test_note:
        tip.append(c.test_note)
    return Td(v, data_v=repr(c.value), title="; ".join(t for t in tip if t), ci=fmt_ci(c), mark=mark(c),
              best=c.best)


def _model(label: str, r: Result, path: str | None) -> ModelInfo:
    """Everything needed to tell two rows apart: weights, options, instructions, search, provenance."""
    m, p, prov = r.model, r.protocol, r.provenance
    fields: list[tuple[str, object]] = [
        ("name", m.get("name")), ("id", m.get("id")), ("revision", m.get("revision")), ("dim", m.get("dim")),
        ("dtype", m.get("dtype")), ("modalities", m.get("modalities")), ("license", m.get("license")),
        ("parameters", m.get("parameters")), ("description", m.get("description")),
        ("fingerprint", m.get("fingerprint")), ("options", m.get("options")),
        ("instructions", p.get("instructions")), ("search", p.get("search")),
        ("query vector", p.get("query_vector")), ("rerank", p.get("rerank")),
        ("cirbench version", r.cirbench_version), ("started at", prov.get("started_at")),
        ("wall time (s)", prov.get("wall_time_s")), ("device", prov.get("device")), ("gpu", prov.get("gpu")),
        ("torch", prov.get("torch")), ("dataset revision", r.task.get("revision")),
        ("result file", path or (r.path.as_posix() if r.path else None)),
    ]
    return ModelInfo(label, [(k, _text(v)) for k, v in fields if v not in (None, "", {})])


# ------------------------------------------------------------------------------------------------------
# Charts
# ------------------------------------------------------------------------------------------------------


def charts(b: Board, rows: list[tuple[str, str]], lookup: Lookup) -> list[Chart]:
    """The main metric overall (bars with 95% intervals) and per breakdown (a heatmap), computed rows only;
    each model has the colour it has on every other cirbench chart."""
    from cirbench.plots import Series, Value, bar_figure, figure_bytes, heatmap_figure

    labels = [label for label, kind in rows if kind == "computed"]
    if not labels:
        return []
    metric = b.main_metric

    def series(kind: str, groups: Sequence[str]) -> list[Series]:
        out = []
        for label in labels:
            s = Series(label=label)
            for g in groups:
                key = ("computed", label, "overall", "overall", metric) if g == "overall" else \
                    ("computed", label, kind, g, metric)
                c = lookup.get(key)
                if c is not None and c.value == c.value:
                    s.values[g] = Value(c.value, c.ci_low, c.ci_high)
            out.append(s)
        return out

    where = f"{b.task} / {b.split} (protocol {b.protocol_name})"
    title = f"{metric} overall: {where}"
    figures = [(title, bar_figure(series("overall", ["overall"]), ["overall"], metric=metric, title=title))]
    for kind in b.breakdowns:
        groups = ["overall", *b.groups(kind)]
        title = f"{metric} per {kind}: {where}"
        figures.append((title, heatmap_figure(series(kind, groups), groups, metric=metric, title=title)))
    return [Chart(t, data_uri(figure_bytes(fig, "svg"), "image/svg+xml")) for t, fig in figures]


__all__ = ["charts", "render_page"]
