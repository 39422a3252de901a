"""`cirbench inspect`: see which queries a model fails, and how (per-query error analysis).

    cirbench inspect results/synthetic-mini/test/cirbench-fusion            # one model
    cirbench inspect RESULT --vs OTHER                                      # where one succeeds, one fails

It reads the result's run.parquet, reloads the task for its images and labels (the result records the task,
split, protocol and dataset folder; `--data-dir` overrides), and writes a self-contained HTML page with
filters plus a PNG sheet of the worst cases. Large tasks are sampled (seeded) and the page says so.

    from cirbench.inspection import inspect_results
    out = inspect_results(Result.read(path))
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cirbench.core.io import atomic_write
from cirbench.core.result import Result
from cirbench.core.types import DatasetError, Item, Task
from cirbench.inspection.cases import (
    Answer,
    Case,
    Filters,
    Hit,
    answers,
    build_cases,
    disagreements,
    sample,
    worst_first,
)
from cirbench.inspection.page import PageInfo, render_page
from cirbench.inspection.sheet import write_sheet
from cirbench.inspection.thumbs import Thumbs, make_thumbs, plan

__all__ = ["Answer", "Case", "Filters", "Hit", "Inspection", "inspect_results", "load_task_of"]

DEFAULT_BUDGET = 16_000_000
"""Bytes of embedded thumbnails: a page of 1,000 queries stays a few MB to a few tens of MB."""


@dataclass
class Inspection:
    page: Path
    sheet: Path
    cases: list[Case]
    n_total: int
    thumbs: Thumbs


def load_task_of(result: Result, data_dir: str | os.PathLike[str] | None = None) -> Task:
    """The task a result was computed on, for its images and labels: --data-dir (a native dataset folder
    or the benchmark's data root), else the dataset folder the result records, else the registry name."""
    from cirbench.core.dataset import MANIFEST
    from cirbench.tasks.registry import get_task

    info, split = result.task, str(result.task.get("split"))
    root = Path(data_dir) if data_dir is not None else None
    recorded = info.get("dataset_dir")
    try:
        if root is not None and (root / MANIFEST).is_file():
            return get_task(str(root), split)
        if root is None and recorded and (Path(recorded) / MANIFEST).is_file():
            return get_task(str(recorded), split)
        return get_task(str(info.get("name")), split, data_dir=root, protocol=result.protocol.get("name"))
    except (KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise DatasetError(f"cannot load task {info.get('name')!r} for its images: {message}; pass "
                           "--data-dir (the dataset folder or the benchmark's data root)",
                           file=result.path) from e


def _images(task: Task) -> dict[str, Item]:
    """Every image a case may show: the gallery, and reference images that are not in it."""
    items = {it.id: it for it in task.corpus}
    for q in task.queries:
        if q.reference_id is not None and q.reference_id not in items and q.item.image is not None:
            items[q.reference_id] = Item(id=q.reference_id, image=q.item.image)
    return items


def _image_ids(cases: Sequence[Case], max_extra: int) -> list[str]:
    ids: dict[str, None] = {}
    for c in cases:
        if c.reference_id is not None:
            ids[c.reference_id] = None
        for a in c.answers:
            ids.update(dict.fromkeys(h.id for h in a.hits))
        ids.update(dict.fromkeys(c.target_ids[:max_extra]))
        ids.update(dict.fromkeys(c.hard_negative_ids[:max_extra]))
    return list(ids)


def inspect_results(
    result: Result,
    vs: Result | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    top: int = 5,
    success_at: int = 1,
    max_queries: int | None = 1000,
    seed: int = 0,
    budget: int = DEFAULT_BUDGET,
    filters: Filters | None = None,
    sheet_rows: int = 8,
    force: bool = False,
    max_extra: int = 4,
) -> Inspection:
    """Write `index.html` and `sheet.png` under `out` (default: `<result folder>/inspect[-vs-<model>]`)."""
    from cirbench.compare import incompatibilities

    if top < 1 or success_at < 1:
        raise ValueError("--top and --success-at must be at least 1")
    notes: list[str] = []
    if vs is not None:
        problems = incompatibilities(result, vs)
        if problems and not force:
            raise ValueError("results are not comparable (use --force to inspect anyway):\n- "
                             + "\n- ".join(problems))
        notes += [f"compared although {p} (--force)" for p in problems]
    task = load_task_of(result, data_dir)
    if task.revision != result.task.get("revision"):
        notes.append(f"the dataset loaded here has revision {task.revision!r}, the result was computed on "
                     f"{result.task.get('revision')!r}")
    runs = [answers(r, task, top=top, success_at=success_at) for r in (result, *([vs] if vs else []))]
    names = [a.model for a in (next(iter(r.values())) for r in runs if r)]
    if len(set(names)) < len(names):  # the same model twice (another seed, options): tell them apart
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
        runs = [{q: Answer(names[i], a.hits, a.first_target_rank, a.success) for q, a in r.items()}
                for i, r in enumerate(runs)]
    cases = build_cases(task, runs)
    selection = [f"{len(cases)} queries scored"]
    if vs is not None:
        cases = disagreements(cases)
        selection.append(f"{len(cases)} where exactly one of the two models succeeds")
    filters = filters or Filters()
    if filters != Filters():
        cases = [c for c in cases if filters.keep(c)]
        selection.append(f"{len(cases)} left after the command-line filters")
    n_total = len(cases)
    cases = sample(cases, max_queries, seed)
    items = _images(task)
    ids = _image_ids(cases, max_extra)
    px, quality, per_image = plan(items, ids, budget)
    if cases and per_image * len(ids) > budget:  # even the smallest thumbnails do not fit: fewer queries
        while len(cases) > 1 and per_image * len(ids) > budget:
            fit = min(len(cases) - 1, max(1, math.floor(len(cases) * budget / (per_image * len(ids)))))
            cases = sample(cases, fit, seed)
            ids = _image_ids(cases, max_extra)
        notes.append(f"the thumbnail budget of {budget / 1e6:.2f} MB allows {len(cases)} queries")
    thumbs = make_thumbs(items, ids, px, quality)
    cases = worst_first(cases)
    models = [str(m) for m in names] if runs and all(runs) else [str(result.model.get("name"))]
    info = PageInfo(
        task=str(result.task.get("name")), split=str(result.task.get("split")),
        protocol=str(result.protocol.get("name")), models=models,
        result_paths=[str(r.path) for r in (result, *([vs] if vs else []))], success_at=success_at, top=top,
        n_total=n_total, n_task=len(task.queries), seed=seed, selection="; ".join(selection) + ".",
        budget=budget, notes=notes,
    )
    folder = Path(out) if out is not None else _default_out(result, vs)
    page = folder / "index.html"
    with atomic_write(page) as f:
        f.write(render_page(cases, thumbs, info, max_extra=max_extra))
    title = f"{' vs '.join(models)} on {info.task}/{info.split}: worst cases first"
    sheet = write_sheet(cases, items, folder / "sheet.png", rows=sheet_rows, title=title)
    return Inspection(page=page, sheet=sheet, cases=cases, n_total=n_total, thumbs=thumbs)


def _default_out(result: Result, vs: Result | None) -> Path:
    """Beside the result; for --vs named after the other result's folder (eval names it after the model)."""
    base = result.path.parent if result.path is not None else Path(".")
    if vs is None:
        return base / "inspect"
    return base / f"inspect-vs-{vs.path.parent.name if vs.path is not None else 'other'}"
