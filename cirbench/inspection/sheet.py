"""The PNG sheet of `cirbench inspect`: the worst cases as a figure for a paper or an issue (matplotlib).

One block per query: its text on top; per model a row with the reference, the top-K (rank and score under
each, targets framed green, hard negatives orange, the reference grey) and the first target for comparison.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from cirbench.colours import model_colours
from cirbench.core.types import Item
from cirbench.inspection.cases import Case
from cirbench.inspection.thumbs import thumbnail

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FRAME = {"target": "#2ca02c", "hard negative": "#ff7f0e", "reference": "#7f7f7f", "query": "#4a78b0"}
SHEET_PX = 160


def _image(items: Mapping[str, Item], iid: str | None) -> Image.Image | None:
    item = items.get(iid) if iid is not None else None
    if item is None:
        return None
    try:
        return Image.open(io.BytesIO(thumbnail(item, SHEET_PX, 85))).convert("RGB")
    except (OSError, ValueError):
        return None


def _panel(ax: Axes, img: Image.Image | None, label: str, frame: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if img is not None:
        ax.imshow(img)
    else:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7, color="#999",
                transform=ax.transAxes)
        ax.set_facecolor("#eeeeee")
    for spine in ax.spines.values():
        spine.set_edgecolor(frame or "#dddddd")
        spine.set_linewidth(3.5 if frame else 0.8)
    ax.set_xlabel(label, fontsize=7, labelpad=2)


def write_sheet(cases: Sequence[Case], items: Mapping[str, Item], path: str | os.PathLike[str], *,
                rows: int = 8, title: str = "") -> Path:
    """The first `rows` cases (the page's order: worst first) as one PNG, written atomically."""
    from matplotlib.figure import Figure

    from cirbench.plots import save_figure

    shown = list(cases[:rows])
    top = max((len(a.hits) for c in shown for a in c.answers), default=0)
    cols = top + 2  # reference, top-K, first target
    n_rows = sum(len(c.answers) for c in shown)
    colours = model_colours(a.model for c in shown for a in c.answers)
    fig = Figure(figsize=(1.35 * cols + 1.2, 0.5 + 1.75 * max(n_rows, 1) + 0.35 * len(shown)),
                 layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    if not shown:
        fig.text(0.5, 0.5, "no query to show", ha="center")
        return save_figure(fig, path)
    blocks = fig.subfigures(len(shown), 1, height_ratios=[len(c.answers) for c in shown], squeeze=False)
    for case, block in zip(shown, blocks[:, 0]):
        where = " / ".join(x for x in (case.category, case.subcategory) if x)
        head = f"{case.query_id}" + (f" [{where}]" if where else "") + f": {case.text}"
        block.suptitle("\n".join(textwrap.wrap(head, 150)[:2]), fontsize=8, x=0.01, ha="left")
        axes = block.subplots(len(case.answers), cols, squeeze=False)
        target = case.target_ids[0] if case.target_ids else None
        for a, ax_row in zip(case.answers, axes):
            _panel(ax_row[0], _image(items, case.reference_id), "reference", FRAME["query"])
            ax_row[0].set_ylabel("\n".join(textwrap.wrap(a.model, 18)[:3]), fontsize=7,
                                 color=colours[a.model], fontweight="bold")
            for j in range(top):
                ax = ax_row[1 + j]
                if j >= len(a.hits):
                    ax.set_axis_off()
                    continue
                h = a.hits[j]
                kind = "target" if h.target else "hard negative" if h.hard_negative else \
                    "reference" if h.reference else None
                _panel(ax, _image(items, h.id), f"#{h.rank} · {h.score:.3f}", FRAME[kind] if kind else None)
            rank = "not found" if a.first_target_rank is None else f"rank {a.first_target_rank}"
            _panel(ax_row[-1], _image(items, target), f"target ({rank})", FRAME["target"])
    return save_figure(fig, path)
