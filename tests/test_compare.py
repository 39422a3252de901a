"""`cirbench compare A B`: the difference is B - A, with a hand-known value, through the CLI and the API."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.compare import compare_results
from cirbench.core.result import Result

runner = CliRunner()

# tiny_dataset: corpus a..e, q1 -> b (ref a), q2 -> {c, d} (ref b), q3 -> e (ref c); reference excluded.
# Corpus vectors are the unit axes, so a query vector's coordinates are its scores.
WEAK = {  # top-1: q1 c (miss), q2 d (hit), q3 e (hit): R@1 = 2/3
    "q1": [0.9, 0.5, 0.7, 0.0, 0.0],
    "q2": [0.0, 0.9, 0.1, 0.8, 0.3],
    "q3": [0.0, 0.0, 0.5, 0.2, 0.6],
}
STRONG = {  # every query's relevant item first: R@1 = 1
    "q1": [0.0, 1.0, 0.0, 0.0, 0.0],
    "q2": [0.0, 0.0, 0.0, 1.0, 0.0],
    "q3": [0.0, 0.0, 0.0, 0.0, 1.0],
}


def vectors(path: Path, queries: dict[str, list[float]]) -> Path:
    rows = [(q, "query", v) for q, v in queries.items()]
    rows += [(cid, "document", list(np.eye(5)[i])) for i, cid in enumerate("abcde")]
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), path)
    return path


def _eval(dataset: Path, model: str, out: Path) -> None:
    res = runner.invoke(app, ["eval", "-m", model, "-t", str(dataset), "-o", str(out), "-q",
                              "--bootstrap", "0"])
    assert res.exit_code == 0, res.output


def test_compare_prints_b_minus_a(tiny_dataset: Path, tmp_path: Path) -> None:
    _eval(tiny_dataset, f"precomputed:{vectors(tmp_path / 'weak.parquet', WEAK)}", tmp_path / "a")
    _eval(tiny_dataset, f"precomputed:{vectors(tmp_path / 'strong.parquet', STRONG)}", tmp_path / "b")
    res = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "500"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if re.search(r"\bR@1\b", line))
    # A = 66.67, B = 100.00, B - A = +33.33; per-query B - A is (1, 0, 0), so the interval is >= 0
    assert "66.67" in row and "100.00" in row and "+33.33" in row, row
    lo, hi = (float(x) for x in re.search(r"\[([+-][\d.]+), ([+-][\d.]+)\]", row).groups())  # type: ignore[union-attr]
    assert 0.0 <= lo <= 33.34 <= hi <= 100.0

    tests, _ = compare_results(Result.read(tmp_path / "a"), Result.read(tmp_path / "b"), n_resamples=200)
    r1 = next(t for t in tests if t.metric == "R@1")
    assert r1.diff == 1 / 3 and r1.mean_a == 2 / 3 and r1.mean_b == 1.0
    assert r1.ci_low >= 0.0
    # swapping the arguments flips the sign and the interval
    back, _ = compare_results(Result.read(tmp_path / "b"), Result.read(tmp_path / "a"), n_resamples=200)
    r1b = next(t for t in back if t.metric == "R@1")
    assert r1b.diff == -1 / 3 and r1b.ci_high <= 0.0 and r1b.mean_a == 1.0
