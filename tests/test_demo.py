"""The main job on the embedded default: `cirbench demo` on synthetic-mini, and the margin it must show.

This is the guard against wiring faults (misaligned ids, a wrong exclusion, a query vector served for a
gallery item): any of them sinks the default model to chance level and fails the margins below.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.result import Result


def test_demo_default_model_beats_the_baselines(tmp_path: Path) -> None:
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["demo", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    r = {
        name: Result.read(tmp_path / name)
        for name in ("cirbench-fusion", "image-only", "text-only", "random")
    }
    r1 = {name: res_.overall["R@1"].value for name, res_ in r.items()}
    assert r["cirbench-fusion"].task["num_queries"] == 1000 and r["cirbench-fusion"].task["limit"] is None
    assert r1["cirbench-fusion"] >= r1["image-only"] + 0.10, r1
    assert r1["cirbench-fusion"] >= r1["text-only"] + 0.10, r1
    assert r1["cirbench-fusion"] >= 10 * max(r1["random"], 0.005), r1
    # every subcategory of the taxonomy is scored, and the charts exist
    assert len(r["cirbench-fusion"].scores["subcategory"]) == 15
    assert len(r["cirbench-fusion"].scores["category"]) == 5
    assert (tmp_path / "per_category.png").stat().st_size > 10_000
    assert "Complex" in res.output and "overall" in res.output
