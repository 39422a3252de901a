"""The command line, in-process (CliRunner): eval, tasks, models, compare."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cirbench.cli import app
from tests.test_evaluate import write_vectors

runner = CliRunner(env={"COLUMNS": "250"})


def test_eval_writes_result_and_run(tiny_dataset: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "random",
            "--task",
            str(tiny_dataset),
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            "--bootstrap",
            "100",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "overall" in res.output and "Attribute" in res.output
    data = json.loads((tmp_path / "o" / "result.json").read_text())
    assert data["model"]["name"] == "random" and (tmp_path / "o" / "run.parquet").is_file()


def test_eval_bad_model_is_a_clean_error(tiny_dataset: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "no-such-model",
            "--task",
            str(tiny_dataset),
            "-q",
            "--output",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and "unknown model 'no-such-model'" in res.output
    assert not (tmp_path / "o").exists()


def test_tasks_and_models_tables() -> None:
    res = runner.invoke(app, ["tasks"])
    assert res.exit_code == 0 and "synthetic-mini" in res.output
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "random" in res.output and "precomputed:" in res.output


def test_compare_paired(tiny_dataset: Path, tmp_path: Path) -> None:
    vectors = write_vectors(tmp_path / "v.parquet")
    for name, model in (("a", "random"), ("b", f"precomputed:{vectors}")):
        res = runner.invoke(
            app,
            [
                "eval",
                "-m",
                model,
                "-t",
                str(tiny_dataset),
                "-o",
                str(tmp_path / name),
                "-q",
                "--bootstrap",
                "0",
            ],
        )
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "500"])
    assert res.exit_code == 0, res.output
    assert "3 paired queries" in res.output and "mAP@2" in res.output


def test_compare_refuses_different_protocols(tiny_dataset: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        res = runner.invoke(
            app,
            [
                "eval",
                "-m",
                "random",
                "-t",
                str(tiny_dataset),
                "-o",
                str(tmp_path / name),
                "-q",
                "--bootstrap",
                "0",
            ],
        )
        assert res.exit_code == 0, res.output
    path = tmp_path / "b" / "result.json"
    data = json.loads(path.read_text())
    data["protocol"]["ap_normaliser"] = "hits"
    path.write_text(json.dumps(data))
    res = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 2 and "ap_normaliser differs" in res.output
    res = runner.invoke(
        app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--force", "--resamples", "200"]
    )
    assert res.exit_code == 0 and "warning (forced)" in res.output
