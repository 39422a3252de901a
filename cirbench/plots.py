"""Pictures of results: grouped bar charts per category (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cirbench.io import atomic_write
from cirbench.result import Result


def per_group_bar_chart(
    results: Sequence[Result], path: Path, *, kind: str = "category", metric: str | None = None
) -> Path:
    """One group of bars per category (and overall), one bar per model, with 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = metric or results[0].main_metric
    groups = ["overall", *sorted({g for r in results for g in r.scores.get(kind, {})})]
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(results)) / 2 + 2), 4.2))
    x = np.arange(len(groups))
    for i, r in enumerate(results):
        vals, lo, hi = [], [], []
        for g in groups:
            s = r.overall.get(metric) if g == "overall" else r.scores.get(kind, {}).get(g, {}).get(metric)
            v = s.value if s is not None and s.value is not None else float("nan")
            vals.append(100 * v)
            lo.append(100 * (v - s.ci_low) if s is not None and s.ci_low is not None else 0)
            hi.append(100 * (s.ci_high - v) if s is not None and s.ci_high is not None else 0)
        ax.bar(
            x + (i - (len(results) - 1) / 2) * width,
            vals,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=str(r.model.get("name")),
        )
    ax.set_xticks(
        x, groups, rotation=30 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center"
    )
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} per {kind}: {results[0].task['name']}/{results[0].task['split']}")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
