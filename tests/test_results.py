"""Results as data (`cirbench.load_results`, `cirbench results`), JSON for scripts, piped output never cut,
`--device auto`, `eval --plots`, and the charts' conventions (one colour per model; zero is not missing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cirbench
from cirbench.cli import app
from cirbench.results import COLUMNS

from .inspect_fixture import Runs, make_runs

narrow = CliRunner(env={"COLUMNS": "40"})  # CliRunner is not a terminal: like `cirbench models | grep`


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("results"))


def test_load_results_is_one_long_frame(runs: Runs) -> None:
    df = cirbench.load_results(runs.good.parent)
    assert list(df.columns) == list(COLUMNS)
    assert set(df.model) == {"precomputed:good.parquet", "precomputed:mixed.parquet"}
    assert set(df.group_kind) == {"overall", "category", "subcategory"}

    def value(model: str, kind: str, group: str, metric: str) -> float:
        hit = df[(df.model == f"precomputed:{model}.parquet") & (df.group_kind == kind) & (df.group == group)
                 & (df.metric == metric)]
        assert len(hit) == 1
        return float(hit.value.iloc[0])

    # hand counts (inspect_fixture): mixed finds the target first on the 6 even queries only; within 5 it
    # misses q5 alone (rank 7)
    assert value("good", "overall", "overall", "R@1") == 1.0
    assert value("mixed", "overall", "overall", "R@1") == 0.5
    assert value("mixed", "overall", "overall", "R@5") == pytest.approx(11 / 12)
    assert value("mixed", "category", "Odd", "R@5") == pytest.approx(5 / 6)
    assert value("mixed", "category", "Even", "R@1") == 1.0
    row = df[(df.model == "precomputed:mixed.parquet") & (df.group_kind == "overall") & (df.metric == "R@1")]
    r = row.iloc[0]
    assert r.task == "colours" and r.split == "test" and r.protocol == "official" and r.n == 12
    assert r.ci_low <= 0.5 <= r.ci_high and r.main_metric == "R@1" and r.path.endswith("result.json")
    assert r.revision == cirbench.Result.read(runs.mixed).model["revision"]
    only = cirbench.load_results([runs.mixed], metrics=["R@1"], group_kinds=["overall"])
    assert len(only) == 1 and only.value.iloc[0] == 0.5


def test_results_command_table_and_json(runs: Runs) -> None:
    res = narrow.invoke(app, ["results", str(runs.good.parent)])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and "precomputed:mixed.parquet" in res.output
    line = next(x for x in res.output.splitlines() if "precomputed:mixed.parquet" in x and "overall" in x
                and "Odd" not in x)
    assert "50.00" in line and "91.67" in line  # R@1, R@5 in %
    res = narrow.invoke(app, ["results", str(runs.good.parent), "--json", "--kind", "category"])
    rows = json.loads(res.output)
    assert len(rows) == 2 * 2 * 2 and {r["group"] for r in rows} == {"Even", "Odd"}
    assert all(set(r) == set(COLUMNS) for r in rows)
    res = narrow.invoke(app, ["results", "/nonexistent/results"])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output


def test_piped_listings_are_never_cut() -> None:
    from cirbench.models.registry import list_models
    from cirbench.tasks.registry import list_tasks

    res = narrow.invoke(app, ["models"])
    assert res.exit_code == 0 and "…" not in res.output
    lines = res.output.splitlines()
    for spec in list_models():  # `cirbench models | grep NAME` finds every model, its id on the same line
        assert any(spec.name in x and spec.id in x for x in lines), spec.name
    res = narrow.invoke(app, ["tasks"])
    assert "…" not in res.output and all(s.name in res.output for s in list_tasks())
    models = json.loads(narrow.invoke(app, ["models", "--json"]).output)
    assert [m["name"] for m in models["models"]] == [s.name for s in list_models()]
    tasks = json.loads(narrow.invoke(app, ["tasks", "--json"]).output)
    assert [t["name"] for t in tasks] == [s.name for s in list_tasks()]
    cirr = next(t for t in tasks if t["name"] == "cirr")
    assert cirr["splits"] == ["val", "test1", "train"] and "reference-kept" in cirr["protocols"]


def test_compare_json(runs: Runs) -> None:
    res = narrow.invoke(app, ["compare", str(runs.good), str(runs.mixed), "--json", "--resamples", "200"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_common"] == 12 and out["task"] == "colours" and out["problems"] == []
    r1 = next(t for t in out["tests"] if t["metric"] == "R@1")
    assert (r1["mean_a"], r1["mean_b"]) == (1.0, 0.5) and abs(r1["diff"]) == 0.5 and 0 <= r1["p_value"] <= 1


def test_device_auto_is_the_default(runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from cirbench.evaluation import EvalOptions, resolve_eval_device

    assert EvalOptions().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_eval_device("auto") == "cuda" and resolve_eval_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_eval_device("auto") == "cpu" and resolve_eval_device("cuda:1") == "cuda:1"
    monkeypatch.undo()
    res = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["eval", "--help"])
    assert "auto" in res.output and "CUDA when present" in " ".join(res.output.split())
    vec = runs.data.parent / "mixed.parquet"
    res = narrow.invoke(app, ["eval", "-m", f"precomputed:{vec}", "-t", str(runs.data), "-o",
                              str(tmp_path / "e"), "-q", "--bootstrap", "20", "--plots"])
    assert res.exit_code == 0, res.output
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # what auto means on this machine
    assert cirbench.Result.read(tmp_path / "e").provenance["device"] == expected
    # --plots: bars per category and a heatmap per subcategory, next to the result
    for name in ("per_category.png", "per_subcategory.png"):
        assert (tmp_path / "e" / name).stat().st_size > 5_000, name
        assert f"chart: {tmp_path / 'e' / name}" in res.output


def test_heatmap_tells_zero_from_missing() -> None:
    from matplotlib.patches import Rectangle

    from cirbench.plots import Series, Value, heatmap_figure

    a = Series("a", {"overall": Value(0.5), "x": Value(0.0), "y": Value(1.0)})
    b = Series("b", {"overall": Value(0.25), "y": Value(0.125)})  # no value for group x
    fig = heatmap_figure([a, b], ["overall", "x", "y"], metric="R@1", title="t")
    ax = fig.axes[0]
    cells = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "50.0", (1, 0): "25.0", (0, 1): "0.0", (1, 1): "–", (0, 2): "100.0",
                     (1, 2): "12.5"}
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 1 and hatched[0].get_xy() == (0.5, 0.5)  # only the missing cell (column b, row x)
    image = ax.images[0].get_array()
    assert image.mask[1, 1] and not image.mask[1, 0] and image[1, 0] == 0.0


def test_one_colour_per_model_everywhere() -> None:
    from cirbench.colours import PALETTE, model_colours

    few = model_colours(["cirbench-fusion", "random"])
    more = model_colours(["random", "image-only", "text-only", "cirbench-fusion"])
    assert set(few.values()) <= set(PALETTE) and len(set(more.values())) == 4
    assert few["cirbench-fusion"] == more["cirbench-fusion"] and few["random"] == more["random"]
    many = model_colours([f"m{i}" for i in range(len(PALETTE))])
    assert len(set(many.values())) == len(PALETTE)  # distinct within one picture while colours last
