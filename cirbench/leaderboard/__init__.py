"""`cirbench leaderboard`: result files (and published numbers) -> Markdown, CSV/parquet and an HTML page.

Results are grouped by task, split and protocol (`collect`), every number becomes a cell with its interval
and, against each table's best row, a paired test (`tables`, `ties`), and the cells are written as one
Markdown file per board, one long CSV/parquet table and one self-contained page (`html`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cirbench.core.io import atomic_write
from cirbench.leaderboard.collect import (
    Board,
    Reported,
    find_result_files,
    group_boards,
    load_reported,
    load_results,
)
from cirbench.leaderboard.html import render_page
from cirbench.leaderboard.tables import ALPHA, Cell, board_cells, board_markdown, cells_frame, index_markdown
from cirbench.leaderboard.ties import PairedTester

__all__ = ["Board", "Cell", "Reported", "build_leaderboard", "find_result_files", "group_boards",
           "load_reported", "load_results"]


def build_leaderboard(result_paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                      reported: str | os.PathLike[str] | Path | None = None, n_resamples: int = 10000,
                      seed: int = 0, alpha: float = ALPHA,
                      on_skip: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Write the leaderboard under `out` and return the files written (each one atomically).

    `result_paths` are result.json files or directories searched recursively; `reported` is the citation
    file of published numbers (see leaderboards/reported.csv). Files: README.md (index), <board>.md per
    board, leaderboard.csv and leaderboard.parquet (every number), index.html. A result file that cannot be
    shown (malformed, or an unlabelled split's) is skipped, listed in README.md and passed to `on_skip`.
    """
    out = Path(out)
    results, skipped_paths = load_results(find_result_files(result_paths))
    for p, why in skipped_paths:
        if on_skip is not None:
            on_skip(p, why)
    rows = load_reported(reported) if reported is not None else []
    boards = group_boards(results, rows)
    tester = PairedTester(n_resamples=n_resamples, seed=seed)
    cells: dict[str, list[Cell]] = {b.slug: board_cells(b, tester, alpha=alpha, root=out) for b in boards}
    skipped = [(_rel(p, out), why) for p, why in skipped_paths]
    written = []
    for b in boards:
        written.append(_write_text(out / f"{b.slug}.md", board_markdown(b, cells[b.slug])))
    written.append(_write_text(out / "README.md", index_markdown(boards, skipped)))
    frame = cells_frame([c for b in boards for c in cells[b.slug]])
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    written.append(_write_text(out / "leaderboard.csv", buf.getvalue()))
    with atomic_write(out / "leaderboard.parquet", binary=True) as f:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f)
    written.append(out / "leaderboard.parquet")
    page = render_page(boards, cells, skipped=skipped, test=tester.describe())
    written.append(_write_text(out / "index.html", page))
    return written


def _write_text(path: Path, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return path


def _rel(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), root.resolve())
    except ValueError:
        return str(path)
