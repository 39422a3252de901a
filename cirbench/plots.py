"""Pictures of results, drawn with matplotlib (headless, no pyplot state): bar charts with 95% intervals and
group × model heatmaps with the numbers in the cells.

The same drawing code serves `cirbench demo`, `cirbench eval --plots` and the leaderboard page (as SVG), and
every model keeps its colour (`cirbench.colours`). In a heatmap a missing value (the model has no such
group) is a hatched grey cell marked "–"; a zero is an ordinary cell of the colour scale marked "0.0".
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cirbench.colours import model_colours
from cirbench.core.io import atomic_write
from cirbench.core.result import Result
from cirbench.leaderboard.collect import lower_is_better

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING = "–"
SVG_SALT = "cirbench"
"""matplotlib's SVG ids derive from this salt: the same chart gives the same bytes."""


@dataclass(frozen=True)
class Value:
    """One number with its interval, as a fraction (or a rank for MedR)."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass
class Series:
    """One model's values per group (group -> Value; an absent group is missing, not zero)."""

    label: str
    values: dict[str, Value] = field(default_factory=dict)
    colour_key: str = ""
    """The name the colour is looked up by (default: the label)."""

    @property
    def key(self) -> str:
        return self.colour_key or self.label


def _scale(metric: str) -> float:
    return 1.0 if lower_is_better(metric) else 100.0


def _fmt(v: float, metric: str) -> str:
    return f"{v:.1f}" if lower_is_better(metric) else f"{100 * v:.1f}"


def _unit(metric: str) -> str:
    return "rank" if lower_is_better(metric) else "%"


def result_series(results: Sequence[Result], kind: str, metric: str,
                  labels: Sequence[str] | None = None) -> tuple[list[Series], list[str]]:
    """Series per result and the groups of `kind` in first-seen order ("overall" first)."""
    groups: dict[str, None] = {"overall": None}
    out = []
    for i, r in enumerate(results):
        name = str(r.model.get("name"))
        s = Series(label=labels[i] if labels else name, colour_key=name)
        groups_of_kind = r.scores.get(kind, {}) if kind != "overall" else {}
        for g, scores in [("overall", r.overall), *groups_of_kind.items()]:
            groups[g] = None
            sc = scores.get(metric)
            if sc is not None and sc.value is not None and sc.value == sc.value:
                s.values[g] = Value(sc.value, sc.ci_low, sc.ci_high)
        out.append(s)
    return out, list(groups)


def bar_figure(series: Sequence[Series], groups: Sequence[str], *, metric: str, title: str) -> Figure:
    """Horizontal bars, one block per group, one bar per model in its colour, 95% interval as a whisker."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    colours = model_colours(s.key for s in series)
    n = max(len(series), 1)
    bar = 0.8 / n
    height = 1.3 + len(groups) * (0.17 * n + 0.2) + 0.2 * (1 + (len(series) - 1) // 3)
    fig = Figure(figsize=(8.0, max(2.6, height)), layout="constrained")
    ax = fig.add_subplot()
    scale = _scale(metric)
    top = 0.0
    for i, s in enumerate(series):
        ys, xs, lo, hi = [], [], [], []
        for gi, g in enumerate(groups):
            v = s.values.get(g)
            if v is None:
                continue
            ys.append(gi + (i - (n - 1) / 2) * bar)
            xs.append(scale * v.value)
            lo.append(scale * (v.value - v.ci_low) if v.ci_low is not None else 0.0)
            hi.append(scale * (v.ci_high - v.value) if v.ci_high is not None else 0.0)
            top = max(top, xs[-1] + hi[-1])
        ax.barh(ys, xs, height=bar * 0.9, xerr=[lo, hi] if ys else None, capsize=2, color=colours[s.key],
                label=s.label, error_kw={"elinewidth": 0.8, "ecolor": "#222"})
        for y, x, h in zip(ys, xs, hi):
            ax.text(x + h + top * 0.01 + 0.3, y, f"{x:.1f}", va="center", fontsize=7, color="#333")
    ax.set_yticks(range(len(groups)), list(groups))
    ax.invert_yaxis()
    ax.set_xlim(0, max(10.0, top * 1.12) if lower_is_better(metric) else min(100.0, max(10.0, top * 1.12)))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
    ax.set_xlabel(f"{metric} ({_unit(metric)}); whiskers: 95% bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10, loc="left")
    fig.legend(fontsize=7, loc="outside lower center", ncols=min(3, n), frameon=False)
    return fig


def heatmap_figure(series: Sequence[Series], groups: Sequence[str], *, metric: str, title: str) -> Figure:
    """Rows: groups; columns: models (a colour key under each name). Numbers in the cells; missing hatched."""
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    colours = model_colours(s.key for s in series)
    scale = _scale(metric)
    cells = [[scale * s.values[g].value if g in s.values else np.nan for s in series] for g in groups]
    data = np.array(cells, dtype=float).reshape(len(groups), len(series))
    lower = lower_is_better(metric)
    finite = data[np.isfinite(data)]
    if lower:
        norm = Normalize(vmin=float(finite.min()) if finite.size else 0.0,
                         vmax=float(finite.max()) if finite.size else 1.0)
    else:
        norm = Normalize(vmin=0.0, vmax=100.0)
    cmap_name = "viridis_r" if lower else "viridis"
    longest = max((len(s.label) for s in series), default=5)
    width = 1.6 + 0.11 * max(len(g) for g in groups) + 0.85 * len(series) + 1.0
    height = 1.0 + 0.045 * min(longest, 40) + 0.3 * len(groups)
    fig = Figure(figsize=(max(4.0, width), max(2.4, height)), layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(data)
    import matplotlib

    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="#f2f2f2")
    image = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
    for gi in range(len(groups)):
        for si in range(len(series)):
            v = data[gi, si]
            if np.isfinite(v):
                r, g, b, _ = cmap(norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.55
                ax.text(si, gi, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
            else:
                ax.add_patch(Rectangle((si - 0.5, gi - 0.5), 1, 1, fill=False, hatch="///",
                                       edgecolor="#bbbbbb", linewidth=0))
                ax.text(si, gi, MISSING, ha="center", va="center", fontsize=9, color="#777777")
    ax.set_yticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_xticks(range(len(series)), [_clip(s.label, 40) for s in series], fontsize=8, rotation=35,
                  ha="left", rotation_mode="anchor")
    ax.xaxis.tick_top()
    ax.tick_params(axis="x", which="major", pad=9)
    for si, s in enumerate(series):  # the model's colour, as on every other chart
        ax.add_patch(Rectangle((si - 0.5, -0.72), 1, 0.2, color=colours[s.key], clip_on=False))
    if "overall" in groups and len(groups) > 1:
        ax.axhline(groups.index("overall") + 0.5, color="white", linewidth=2)
    ax.set_xticks(np.arange(-0.5, len(series), 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(groups), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label(f"{metric} ({_unit(metric)})", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(f"{MISSING} hatched: no value for this group; 0.0 is a measured zero", fontsize=7,
                  color="#555555")
    return fig


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """PNG or SVG bytes, reproducible (no date, fixed SVG ids), text kept as text in SVG."""
    import matplotlib

    buf = io.BytesIO()
    meta: dict[str, str | None] = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "none"}):
        fig.savefig(buf, format=fmt, dpi=110, metadata=meta)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write atomically; the format follows the suffix (.png or .svg)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg"):
        raise ValueError(f"chart format must be .png or .svg, got {path.name!r}")
    data = figure_bytes(fig, fmt)
    with atomic_write(path, binary=True) as f:
        f.write(data)
    return path


def _title(results: Sequence[Result], metric: str, kind: str) -> str:
    return f"{metric} per {kind}: {results[0].task['name']}/{results[0].task['split']}"


def per_group_bar_chart(
    results: Sequence[Result], path: Path, *, kind: str = "category", metric: str | None = None
) -> Path:
    """Overall and each group of `kind`, one bar per model, with 95% CI whiskers."""
    metric = metric or results[0].main_metric
    series, groups = result_series(results, kind, metric)
    return save_figure(bar_figure(series, groups, metric=metric, title=_title(results, metric, kind)), path)


def per_group_heatmap(
    results: Sequence[Result], path: Path, *, kind: str = "subcategory", metric: str | None = None
) -> Path:
    """Overall and each group of `kind` (rows) × model (columns), the value in each cell."""
    metric = metric or results[0].main_metric
    series, groups = result_series(results, kind, metric)
    return save_figure(heatmap_figure(series, groups, metric=metric, title=_title(results, metric, kind)),
                       path)


def write_result_plots(results: Sequence[Result], out: str | os.PathLike[str], *,
                       metric: str | None = None, fmt: str = "png") -> list[Path]:
    """The charts of `demo` and `eval --plots`: bars per category, a heatmap per finer breakdown."""
    out = Path(out)
    kinds: dict[str, None] = {}
    for r in results:
        kinds.update(dict.fromkeys(r.breakdown_kinds()))
    written = []
    if not kinds or "category" in kinds:
        written.append(per_group_bar_chart(results, out / f"per_category.{fmt}", kind="category",
                                           metric=metric))
    for kind in kinds:
        if kind != "category":
            written.append(per_group_heatmap(results, out / f"per_{kind}.{fmt}", kind=kind, metric=metric))
    return written

