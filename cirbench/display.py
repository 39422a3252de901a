"""Rich tables of results for the terminal (values shown in %, as CIR papers report them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from cirbench.core.result import Result, Score


def fmt(score: Score | None, metric: str, *, ci: bool = True) -> str:
    if score is None or score.value is None or score.value != score.value:
        return "–"
    if metric == "MedR":
        return f"{score.value:.1f}"
    text = f"{100 * score.value:.2f}"
    if ci and score.ci_low is not None and score.ci_high is not None:
        text += f" [dim]±{50 * (score.ci_high - score.ci_low):.1f}[/dim]"
    return text


def result_table(
    result: Result, *, breakdown: Sequence[str] = ("category", "subcategory"), ci: bool = True
) -> Table:
    """One row per group (overall first, then each category and subcategory), one column per metric."""
    metrics = list(result.overall) or list(result.protocol.get("metrics", []))
    title = (
        f"{result.model.get('name')} on {result.task['name']}/{result.task['split']} "
        f"({result.task['num_queries']} queries, {result.task['num_corpus']} gallery)"
    )
    caption = "values in %; ± is half the 95% bootstrap interval" if ci else None
    table = Table(title=escape(title), caption=caption)
    table.add_column("group", style="bold")
    table.add_column("n", justify="right")
    for m in metrics:
        table.add_column(escape(m) + (" ★" if m == result.main_metric else ""), justify="right")
    overall = result.overall
    n = next(iter(overall.values())).n if overall else result.task["num_queries"]
    table.add_row("overall", str(n), *[fmt(overall.get(m), m, ci=ci) for m in metrics])
    taxonomy: dict[str, Any] = result.protocol.get("taxonomy", {}) or {}
    for kind in breakdown:
        groups = result.scores.get(kind, {})
        if not groups:
            continue
        table.add_section()
        for g, scores in groups.items():
            label = escape(f"  {g}" if kind == "subcategory" and taxonomy else g)  # dataset text, not markup
            n = next(iter(scores.values())).n if scores else 0
            table.add_row(
                f"[dim]{kind}[/dim] {label}", str(n), *[fmt(scores.get(m), m, ci=ci) for m in metrics]
            )
    return table


def comparison_table(
    results: Sequence[Result], *, kind: str = "subcategory", metric: str | None = None
) -> Table:
    """Models side by side on one metric, per group: the modality-bias view of a demo run."""
    metric = metric or results[0].main_metric
    task = results[0].task
    table = Table(title=escape(f"{metric} (%) per {kind}: {task['name']}/{task['split']}"))
    table.add_column(kind, style="bold")
    for r in results:
        table.add_column(escape(str(r.model.get("name"))), justify="right")
    table.add_row("overall", *[fmt(r.overall.get(metric), metric, ci=False) for r in results])
    table.add_section()
    groups = sorted({g for r in results for g in r.scores.get(kind, {})})
    for g in groups:
        cells = [fmt(r.scores.get(kind, {}).get(g, {}).get(metric), metric, ci=False) for r in results]
        table.add_row(escape(g), *cells)
    return table
