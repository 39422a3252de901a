"""The static leaderboard page: sortable tables, inline SVG charts, model metadata, each table's protocol.

One self-contained file (no CDN, no external font or script) so it works offline and can be archived
with the results. Every user-controlled string (model, task, group names, sources, metadata) goes through
`esc`; a Content-Security-Policy that allows only the page's own script (by hash) is a second line of
defence should an escape ever be missed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from html import escape
from typing import Any

import cirbench
from cirbench.leaderboard.collect import Board, lower_is_better
from cirbench.leaderboard.tables import (
    LEGEND,
    REPORTED_POLICY,
    TIE_MARK,
    Cell,
    Lookup,
    fmt_ci,
    fmt_value,
    lookup_cells,
    mark,
    protocol_fields,
    row_order,
)
from cirbench.result import Result

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")

SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var v = cell ? cell.getAttribute("data-v") : null;
    if (v === null || v === "") { return null; }
    var f = Number(v);
    return isNaN(f) ? v.toLowerCase() : f;
  }
  function sortBy(table, th, col) {
    var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return dir === "ascending" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var button = th.querySelector("button");
      if (button) { button.addEventListener("click", function () { sortBy(table, th, col); }); }
    });
  });
  document.documentElement.setAttribute("data-sortable", String(tables.length));
})();
"""

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:0 16px 48px;color:#1b1b1b;background:#fff}
h1{margin:24px 0 4px}h2{margin:36px 0 6px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{margin:20px 0 6px}.sub{color:#555}.proto{font-size:.7em;color:#555;font-weight:normal}
table.lb{border-collapse:collapse;margin:6px 0 10px;font-variant-numeric:tabular-nums}
table.lb th,table.lb td{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:right;white-space:nowrap}
table.lb th[scope=row],table.lb .kind,table.lb thead th:first-child{text-align:left}
table.lb thead th{background:#f4f4f4;position:sticky;top:0}
table.lb thead th button{all:unset;cursor:pointer;font-weight:600}
table.lb thead th button:focus-visible{outline:2px solid #1f77b4}
th[aria-sort=descending] button::after{content:" \\25BE"}
th[aria-sort=ascending] button::after{content:" \\25B4"}
td.best{font-weight:700}.ci{color:#777;font-size:.85em;margin-left:4px}.mark{color:#b05a00;margin-left:3px}
tr.reported{background:#fbf7ec;font-style:italic}tr.reported th[scope=row]{font-style:italic}
.badge{display:inline-block;font-size:.75em;font-style:normal;background:#e0a800;color:#222;border-radius:3px;
padding:0 4px;margin-left:6px}
.flags{color:#8a4b00;background:#fff4e0;padding:6px 6px 6px 28px;border-radius:4px}
details{margin:6px 0}summary{cursor:pointer;color:#174f7a}
table.kv{border-collapse:collapse;font-size:.9em}table.kv th{text-align:left;padding:2px 10px 2px 0;
vertical-align:top;color:#444}table.kv td{padding:2px 0;word-break:break-word}
.legend{font-size:.9em;color:#333;background:#f7f7f7;padding:8px 10px;border-radius:4px}
.chart{max-width:100%;height:auto;display:block;margin:4px 0 12px}
code{background:#f1f1f1;padding:0 3px;border-radius:3px}
"""


def esc(value: object) -> str:
    """HTML-escape anything user-controlled (quotes too, so it is safe inside attributes)."""
    return escape(str(value), quote=True)


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "img-src data:; base-uri 'none'; form-action 'none'")


def render_page(boards: Sequence[Board], cells: dict[str, list[Cell]], *,
                skipped: Sequence[tuple[str, str]] = (), test: dict[str, Any] | None = None) -> str:
    """The whole page; `cells` maps a board's slug to its cells (see tables.board_cells)."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_csp())}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>cirbench leaderboard</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        "<h1>cirbench leaderboard</h1>",
        f'<p class="sub">Built by cirbench {esc(cirbench.__version__)} from '
        f"{sum(len(b.results) for b in boards)} result file(s) and "
        f"{sum(len(b.reported) for b in boards)} reported number(s).</p>",
        f'<p class="legend">{_inline_md(LEGEND)}'
        + (f" Test: {esc(test.get('test'))}, {esc(test.get('n_resamples'))} resamples, seed "
           f"{esc(test.get('seed'))}." if test else "") + "</p>",
        f'<p class="legend">{_inline_md(REPORTED_POLICY)}</p>',
        '<nav><h2>Benchmarks</h2><ul>',
    ]
    for b in boards:
        parts.append(f'<li><a href="#board-{esc(b.slug)}">{esc(b.task)} / {esc(b.split)}</a> '
                     f'<span class="proto">protocol {esc(b.protocol_name)}</span>'
                     + (" ⚠" if b.flags else "") + "</li>")
    parts.append("</ul></nav>")
    if skipped:
        parts.append('<details><summary>Skipped result files</summary><ul>')
        parts += [f"<li><code>{esc(p)}</code>: {esc(why)}</li>" for p, why in skipped]
        parts.append("</ul></details>")
    for b in boards:
        parts.append(_board(b, cells.get(b.slug, [])))
    parts += [f"<script>{SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _inline_md(text: str) -> str:
    """The shared legend texts use *emphasis* and `code`; render just those two after escaping."""
    s = esc(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", s)


def _board(b: Board, cells: list[Cell]) -> str:
    lookup = lookup_cells(cells)
    rows = row_order(b, lookup)
    out = [f'<section class="board" id="board-{esc(b.slug)}">',
           f'<h2>{esc(b.task)} / {esc(b.split)} <span class="proto">protocol <code>{esc(b.protocol_name)}'
           f"</code>{' (variant ' + str(b.variant) + ')' if b.variant > 1 else ''}</span></h2>"]
    if b.flags:
        out.append('<ul class="flags">' + "".join(f"<li>⚠ {esc(f)}</li>" for f in b.flags) + "</ul>")
    out.append(_protocol(b))
    sources: dict[str, int] = {}
    for r in b.reported:
        sources.setdefault(r.source, len(sources) + 1)
    out.append("<h3>Overall</h3>")
    out.append(_overall_table(b, rows, lookup, sources))
    for kind in b.breakdowns:
        out.append(f"<h3>Per {esc(kind)} ({esc(b.main_metric)})</h3>")
        out.append(_breakdown_table(b, kind, rows, lookup))
        out.append(bar_chart(b, kind, rows, lookup))
    if sources:
        out.append("<h4>Sources of reported rows</h4><ol class=\"sources\">")
        out += [f'<li id="src-{esc(b.slug)}-{i}">{_linkify(s)}</li>' for s, i in sources.items()]
        out.append("</ol>")
    if b.results:
        out.append(f"<details class=\"models\"><summary>Models ({len(b.results)}): metadata and run "
                   "settings</summary>")
        paths = {c.row: c.result_path for c in cells if c.row_kind == "computed"}
        out += [_model(label, r, paths.get(label)) for label, r in zip(b.labels, b.results, strict=True)]
        out.append("</details>")
    out.append("</section>")
    return "\n".join(out)


def _linkify(text: str) -> str:
    parts = re.split(r"(https?://[^\s,;()]+)", text)
    return "".join(f'<a href="{esc(p)}" rel="noopener noreferrer">{esc(p)}</a>' if i % 2 else esc(p)
                   for i, p in enumerate(parts))


def _protocol(b: Board) -> str:
    if b.protocol is None:
        return (f'<p class="sub">Reported numbers under protocol <code>{esc(b.protocol_name)}</code>; '
                "no cirbench result shares this table.</p>")
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_text(v))}</td></tr>" for k, v in protocol_fields(b))
    notes = b.protocol.get("notes") or {}
    rows += "".join(f"<tr><th>note: {esc(k)}</th><td>{esc(_text(v))}</td></tr>" for k, v in notes.items())
    return (f"<details class=\"protocol\"><summary>Protocol of every column of this board: <code>"
            f"{esc(b.protocol_name)}</code></summary><table class=\"kv\">{rows}</table></details>")


def _text(v: object) -> str:
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, ensure_ascii=False, default=str)
    return "–" if v is None else str(v)


def _column_title(b: Board, metric: str) -> str:
    if b.protocol is None or metric not in b.protocol.get("metrics", []):
        return f"{metric}: reported only (no cirbench result has this metric under this protocol)"
    p = b.protocol
    return (f"{metric} under protocol {p.get('name')}: gallery {p.get('gallery')}; exclude reference "
            f"{p.get('exclude_reference')}; AP normaliser {p.get('ap_normaliser')}; run depth "
            f"{p.get('top_k')}; text template {p.get('text_template')}; caption join {p.get('caption_join')}")


def _th(label: str, title: str = "", sort: str | None = None, cls: str = "") -> str:
    t = f' title="{esc(title)}"' if title else ""
    s = f' aria-sort="{sort}"' if sort else ""
    c = f' class="{cls}"' if cls else ""
    return f'<th scope="col"{c}{t}{s}><button type="button">{esc(label)}</button></th>'


def _overall_table(b: Board, rows: list[tuple[str, str]], lookup: Lookup, sources: dict[str, int]) -> str:
    main_sort = "ascending" if lower_is_better(b.main_metric) else "descending"
    head = [_th("model"), _th("kind", cls="kind")]
    head += [_th(m + (" ★" if m == b.main_metric else ""), _column_title(b, m),
                 main_sort if m == b.main_metric else None) for m in b.metrics]
    body = []
    for label, kind in rows:
        if kind == "reported":
            refs = sorted({sources[r.source] for r in b.reported if r.label == label})
            links = "".join(f'<sup><a href="#src-{esc(b.slug)}-{i}">[{i}]</a></sup>' for i in refs)
            notes = "; ".join(f"{r.metric}: {r.note}" for r in b.reported if r.label == label and r.note)
            name = f'{esc(label)}<span class="badge">reported</span>{links}'
            if notes:
                name = f'<span title="{esc(notes)}">{name}</span>'
        else:
            name = esc(label)
        tds = "".join(_td(lookup.get((kind, label, "overall", "overall", m))) for m in b.metrics)
        body.append(f'<tr class="{kind}"><th scope="row" data-v="{esc(label)}">{name}</th>'
                    f'<td class="kind" data-v="{kind}">{kind}</td>{tds}</tr>')
    return (f'<table class="sortable lb" id="t-{esc(b.slug)}-overall"><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _breakdown_table(b: Board, kind: str, rows: list[tuple[str, str]], lookup: Lookup) -> str:
    m = b.main_metric
    groups = b.groups(kind)
    title = _column_title(b, m)
    head = [_th("model"), _th("overall", title)] + [_th(g, f"{kind} {g}: {title}") for g in groups]
    body = []
    for label, row_kind in rows:
        if row_kind != "computed":
            continue
        tds = _td(lookup.get((row_kind, label, "overall", "overall", m)))
        tds += "".join(_td(lookup.get((row_kind, label, kind, g, m))) for g in groups)
        body.append(f'<tr class="computed"><th scope="row" data-v="{esc(label)}">{esc(label)}</th>{tds}</tr>')
    return (f'<table class="sortable lb" id="t-{esc(b.slug)}-{esc(kind)}"><thead><tr>{"".join(head)}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def _td(c: Cell | None) -> str:
    if c is None or c.value != c.value:
        return '<td data-v="">–</td>'
    v = fmt_value(c.value, c.metric)
    if c.row_kind == "reported":
        return f'<td data-v="{c.value!r}" title="reported in the paper; not computed by cirbench">{v}</td>'
    ci = fmt_ci(c)
    m = mark(c)
    tip = [f"n = {c.n}" if c.n else ""]
    if c.best:
        tip.append("best computed row")
    elif c.p_value is not None:
        tip.append(f"paired test vs best: p = {c.p_value:.3g}"
                   + (" (tie)" if c.tie else " (significantly different)"))
    elif c.test_note:
        tip.append(c.test_note)
    cls = ' class="best"' if c.best else ""
    return (f'<td data-v="{c.value!r}"{cls} title="{esc("; ".join(t for t in tip if t))}">{v}'
            + (f'<span class="ci">{esc(ci)}</span>' if ci else "")
            + (f'<span class="mark">{esc(m)}</span>' if m else "") + "</td>")


def _model(label: str, r: Result, path: str | None) -> str:
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
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_text(v))}</td></tr>" for k, v in fields
                   if v not in (None, "", {}))
    return (f'<details class="model"><summary>{esc(label)}</summary><table class="kv">{rows}</table>'
            "</details>")


# ------------------------------------------------------------------------------------------------------
# Charts
# ------------------------------------------------------------------------------------------------------


def bar_chart(b: Board, kind: str, rows: list[tuple[str, str]], lookup: Lookup) -> str:
    """Horizontal grouped bars of the main metric, overall then each group, one bar per computed row,
    with the 95% interval as a whisker. Hand-built SVG: small, deterministic, no ids to collide."""
    metric = b.main_metric
    groups = ["overall", *b.groups(kind)]
    labels = [label for label, k in rows if k == "computed"]
    lower = lower_is_better(metric)
    scale = 1.0 if lower else 100.0

    def cell(label: str, g: str) -> Cell | None:
        key = ("computed", label, "overall", "overall", metric) if g == "overall" else \
            ("computed", label, kind, g, metric)
        c = lookup.get(key)
        return c if c is not None and c.value == c.value else None

    highs = [scale * (c.ci_high if c.ci_high is not None else c.value)
             for g in groups for label in labels if (c := cell(label, g)) is not None]
    top = max(highs, default=1.0)
    vmax = max(1.0, top * 1.1) if lower else min(100.0, max(10.0, 10.0 * -(-top // 10)))
    width, left, right, bar, gap = 780, 180, 56, 11, 12
    plot = width - left - right
    per_row = max(1, (width - 20) // 190)
    legend_h = 18 * (-(-len(labels) // per_row))
    top_y = 30 + legend_h
    height = top_y + len(groups) * (len(labels) * bar + gap) + 30

    def x(v: float) -> float:
        return left + plot * max(0.0, min(v, vmax)) / vmax

    title = f"{metric} per {kind}: {b.task} / {b.split} (protocol {b.protocol_name})"
    svg = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img"><title>{esc(title)}</title>',
           f'<text x="10" y="16" font-size="13" font-weight="600">{esc(title)}</text>']
    for i, label in enumerate(labels):
        lx, ly = 10 + (i % per_row) * 190, 24 + (i // per_row) * 18
        svg.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{lx + 14}" y="{ly + 9}" font-size="11">{esc(_clip(label, 28))}'
                   f"<title>{esc(label)}</title></text>")
    bottom = height - 30
    for t in range(6):
        v = vmax * t / 5
        tx = x(v)
        svg.append(f'<line x1="{tx:.1f}" y1="{top_y - 4}" x2="{tx:.1f}" y2="{bottom}" stroke="#e5e5e5"/>'
                   f'<text x="{tx:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{v:.0f}</text>')
    unit = "rank" if lower else "%"
    svg.append(f'<text x="{left + plot / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">'
               f"{esc(metric)} ({unit})</text>")
    y = top_y
    for g in groups:
        block = len(labels) * bar
        svg.append(f'<text x="{left - 6}" y="{y + block / 2 + 4:.1f}" font-size="11" text-anchor="end">'
                   f"{esc(_clip(g, 26))}<title>{esc(g)}</title></text>")
        for i, label in enumerate(labels):
            c = cell(label, g)
            if c is not None:
                v = scale * c.value
                tip = f"{label} | {g}: {fmt_value(c.value, metric)} {fmt_ci(c)}".strip()
                svg.append(f'<rect x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{bar - 2}" '
                           f'fill="{PALETTE[i % len(PALETTE)]}"><title>{esc(tip)}</title></rect>')
                end = x(v)
                if c.ci_low is not None and c.ci_high is not None:
                    lo, hi = x(scale * c.ci_low), x(scale * c.ci_high)
                    mid = y + (bar - 2) / 2
                    svg.append(f'<path d="M{lo:.1f} {mid:.1f}H{hi:.1f}M{lo:.1f} {mid - 3:.1f}V{mid + 3:.1f}'
                               f'M{hi:.1f} {mid - 3:.1f}V{mid + 3:.1f}" stroke="#222" stroke-width="1"/>')
                    end = max(end, hi)
                svg.append(f'<text x="{end + 3:.1f}" y="{y + bar - 3}" font-size="9" fill="#333">'
                           f"{fmt_value(c.value, metric)}</text>")
            y += bar
        y += gap
    svg.append(f'<line x1="{left}" y1="{top_y - 4}" x2="{left}" y2="{bottom}" stroke="#999"/></svg>')
    return "".join(svg)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


__all__ = ["TIE_MARK", "bar_chart", "esc", "render_page"]
