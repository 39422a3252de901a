"""`cirbench demo`: the whole main job offline, on the embedded synthetic benchmark and default model."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from cirbench.core.result import Result

DEMO_MODELS = ("cirbench-fusion", "image-only", "text-only", "random")


def run_demo(
    out: Path,
    *,
    limit: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    task: str = "synthetic-mini",
    models: tuple[str, ...] = DEMO_MODELS,
) -> list[Result]:
    """Evaluate the default model and the baselines; write results, a summary and a per-category chart."""
    from cirbench.display import comparison_table
    from cirbench.evaluation import EvalOptions, evaluate, safe_name
    from cirbench.plots import write_result_plots

    console = console or Console()
    t0 = time.perf_counter()
    results = []
    for name in models:
        console.rule(f"{name} on {task}")
        results.append(
            evaluate(  # the demo's own folder: each run replaces the last (the vectors come from the cache)
                name,
                task,
                output=out / safe_name(name),
                limit=limit,
                options=EvalOptions(progress=progress, overwrite=True),
            )
        )
    for kind in ("category", "subcategory"):
        console.print(comparison_table(results, kind=kind))
    charts = write_result_plots(results, out)
    console.print(
        f"wrote {len(results)} results under {out}/ and the charts "
        f"{', '.join(map(str, charts))} in {time.perf_counter() - t0:.0f} s"
    )
    return results
