"""result.json + run.parquet are one unit; re-running into a result folder; where results go; --limit on a
server split; file permissions; the dtype recorded once. All through `cirbench eval` / `compare`."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cirbench.cli import app

from .test_tasks_cirr import write_cirr

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _eval(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["eval", "-q", "--bootstrap", "0", *args])
    return res.exit_code, " ".join(res.output.split())


def _ok(*args: str) -> str:
    code, output = _eval(*args)
    assert code == 0, output
    return output


# ------------------------------------------------------------------------------------------------------------
# One unit
# ------------------------------------------------------------------------------------------------------------

KILL_BEFORE_RESULT = textwrap.dedent('''
    import os, signal, sys
    import cirbench
    from cirbench.evaluation import EvalOptions
    from cirbench.core.result import Result

    def killed(self, path):  # the process dies after run.parquet is written, before result.json
        os.kill(os.getpid(), signal.SIGKILL)
    Result.write = killed
    replace = {"overwrite": True} if "overwrite" in EvalOptions.__dataclass_fields__ else {}  # older code
    cirbench.evaluate("random", sys.argv[1], output=sys.argv[2], limit=2,
                      options=EvalOptions(progress=False, n_bootstrap=0, **replace))
''')


def test_a_killed_eval_never_leaves_a_mixed_pair(tiny_dataset: Path, tmp_path: Path) -> None:
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "a"))
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "b"))
    script = tmp_path / "killed.py"
    script.write_text(KILL_BEFORE_RESULT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(tiny_dataset), str(tmp_path / "b")], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    # the new (2-query) run.parquet is there, the old (3-query) result.json is not: no mixed pair
    assert (tmp_path / "b" / "run.parquet").is_file() and not (tmp_path / "b" / "result.json").exists()
    res = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code != 0 and "result file is missing" in " ".join(res.output.split())


def test_readers_refuse_a_run_file_from_another_eval(tiny_dataset: Path, tmp_path: Path) -> None:
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "a"))
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "b"))
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "small"), "--limit", "2")
    shutil.copy(tmp_path / "small" / "run.parquet", tmp_path / "b" / "run.parquet")  # a mixed pair
    res = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "50"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "does not belong to its result.json" in out and "run.parquet" in out
    from cirbench.core.result import Result
    from cirbench.leaderboard.ties import PairedTester

    tie = PairedTester(n_resamples=50).test(Result.read(tmp_path / "a"), Result.read(tmp_path / "b"), "R@1",
                                            kind="category", group="Attribute")
    assert tie.p_value is None and "does not belong" in tie.note


# ------------------------------------------------------------------------------------------------------------
# Re-running into a result folder (as `mteb run`: skip identical, refuse different unless --overwrite)
# ------------------------------------------------------------------------------------------------------------


def test_identical_result_is_reused_and_a_different_one_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(out), "--cache-dir", str(tmp_path / "c"))
    before = (out / "result.json").read_bytes()
    again = _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(out), "--cache-dir", str(tmp_path / "c"))
    assert "identical result is already at" in again and (out / "result.json").read_bytes() == before

    code, output = _eval("-m", "random", "--option", "seed=1", "-t", str(tiny_dataset), "-o", str(out))
    assert code == 2 and "holds a different result" in output
    assert "model" in output and "--overwrite" in output
    assert (out / "result.json").read_bytes() == before
    code, output = _eval("-m", "random", "-t", str(tiny_dataset), "-o", str(out), "--limit", "2")
    assert code == 2 and "task" in output and (out / "result.json").read_bytes() == before

    _ok("-m", "random", "--option", "seed=1", "-t", str(tiny_dataset), "-o", str(out), "--overwrite")
    replaced = json.loads((out / "result.json").read_text())
    assert replaced["model"]["fingerprint"]["seed"] == 1


@pytest.fixture
def cirr_root(tmp_path: Path) -> Path:
    return write_cirr(tmp_path / "data" / "cirr", "readme")


def test_default_paths_separate_protocol_limit_and_revision(
    cirr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["-m", "random", "-t", "cirr", "--data-dir", str(cirr_root)]
    for extra in ([], ["--protocol", "reference-kept"], ["--limit", "2"]):
        _ok(*base, *extra)
    found = sorted(str(p.parent.relative_to(tmp_path / "results")) for p in
                   (tmp_path / "results").rglob("result.json"))
    assert len(found) == 3, found
    rev = json.loads((tmp_path / "results" / found[0] / "result.json").read_text())["task"]["revision"]
    rev_dir = rev.replace(":", "_")[:40]
    assert found == sorted([f"cirr/val/official/{rev_dir}/random",
                            f"cirr/val/reference-kept/{rev_dir}/random",
                            f"cirr/val/official/{rev_dir}/random-limit2"])
    # another dataset revision goes to another folder, not over the first result
    caps = cirr_root / "captions" / "cap.rc2.val.json"
    caps.write_text(json.dumps(json.loads(caps.read_text())[:-1]))
    _ok(*base)
    assert len(list((tmp_path / "results").rglob("result.json"))) == 4


def test_limit_on_a_server_split_writes_no_submission_file(cirr_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    output = _ok("-m", "random", "-t", "cirr", "--split", "test1", "--data-dir", str(cirr_root),
                 "-o", str(out), "--limit", "1")
    assert sorted(p.name for p in out.iterdir()) == ["result.json", "run.parquet"]
    result = json.loads((out / "result.json").read_text())
    assert "submission" not in result["files"] and "--limit 1" in result["files"]["submission_skipped"]
    assert "no submission file" in output
    full = tmp_path / "full"
    _ok("-m", "random", "-t", "cirr", "--split", "test1", "--data-dir", str(cirr_root), "-o", str(full))
    assert {"cirr_test1_recall.json", "cirr_test1_recall_subset.json"} <= {p.name for p in full.iterdir()}
    # a --limit run replacing the full one does not leave the full run's server files beside its result
    _ok("-m", "random", "-t", "cirr", "--split", "test1", "--data-dir", str(cirr_root), "-o", str(full),
        "--limit", "1", "--overwrite")
    assert sorted(p.name for p in full.iterdir()) == ["result.json", "run.parquet"]


# ------------------------------------------------------------------------------------------------------------
# Permissions follow the umask
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_and_folders_follow_the_umask(umask_022: None, tiny_dataset: Path, tmp_path: Path) -> None:
    from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset

    from .conftest import png

    out, cache = tmp_path / "o", tmp_path / "cache"
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(out), "--cache-dir", str(cache))
    assert _mode(out / "result.json") == 0o644 and _mode(out / "run.parquet") == 0o644
    parts = list(cache.rglob("part-*.parquet")) + list(cache.rglob("namespace.json"))
    assert parts and all(_mode(p) == 0o644 for p in parts)
    root = write_dataset(tmp_path / "built", {"test": SplitData(
        queries=[QueryRecord(id="q", reference_id="a", text="t", relevant_ids=["b"])],
        corpus=[ImageRecord(id="a", image=png((1, 2, 3))), ImageRecord(id="b", image=png((3, 2, 1)))])},
        name="built")
    assert _mode(root) == 0o755 and all(_mode(p) == 0o644 for p in root.rglob("*") if p.is_file())
    res = runner.invoke(app, ["leaderboard", str(out), "--out", str(tmp_path / "board")])
    assert res.exit_code == 0, res.output
    board = [p for p in (tmp_path / "board").rglob("*") if p.is_file()]
    assert board and all(_mode(p) == 0o644 for p in board)


# ------------------------------------------------------------------------------------------------------------
# One source for the dtype
# ------------------------------------------------------------------------------------------------------------


def test_dtype_is_asked_once_and_recorded_once(tiny_dataset: Path, tmp_path: Path) -> None:
    code, output = _eval("-m", "random", "--dtype", "bfloat16", "-t", str(tiny_dataset),
                         "-o", str(tmp_path / "a"))
    assert code == 2 and "computes in float32" in output and not (tmp_path / "a").exists()
    code, output = _eval("-m", "random", "--dtype", "float32", "--option", "dtype=bf16",
                         "-t", str(tiny_dataset), "-o", str(tmp_path / "b"))
    assert code == 2 and "disagree" in output
    _ok("-m", "random", "--dtype", "fp32", "-t", str(tiny_dataset), "-o", str(tmp_path / "c"))
    model = json.loads((tmp_path / "c" / "result.json").read_text())["model"]
    assert model["dtype"] == "float32" and "dtype" not in model["options"]


# ------------------------------------------------------------------------------------------------------------
# The schema: what the eval flow writes passes it; older files are read or refused, naming their version
# ------------------------------------------------------------------------------------------------------------

OLD = ROOT / "tests" / "data" / "results-1.1"
"""result.json + run.parquet written by cirbench 0.1.0 before the protocol became typed (schema 1.1, commit
eda105c; the random baseline on the CIRCO and MMLandmarks fixtures; task.dataset_dir blanked). CIRCO's kept
its recall rule in notes.recall_on, MMLandmarks paper-code its scorer as an import path in notes.scorer."""


def _schema() -> dict[str, object]:
    from importlib import resources

    text = resources.files("cirbench").joinpath("schemas/result.schema.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def test_results_of_the_eval_flow_match_the_shipped_schema(tiny_dataset: Path, tmp_path: Path) -> None:
    import jsonschema

    from .test_tasks_circo import write_circo

    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "tiny"))
    _ok("-m", "random", "-t", "circo", "--data-dir", str(write_circo(tmp_path / "circo")),
        "-o", str(tmp_path / "circo-out"))
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for out in ("tiny", "circo-out"):
        d = json.loads((tmp_path / out / "result.json").read_text())
        jsonschema.validate(d, schema)
        assert d["schema_version"] == "2.0" and list(d["scores"]["overall"]) == ["overall"]
    circo = json.loads((tmp_path / "circo-out" / "result.json").read_text())
    assert circo["protocol"]["recall_on"] == "target_id" and "recall_on" not in circo["protocol"]["notes"]
    assert circo["protocol"]["breakdowns"]["aspect"] == "aspects" and circo["scores"]["aspect"]
    bad = {**circo, "scores": {**circo["scores"], "overall": circo["scores"]["overall"]["overall"]}}
    with pytest.raises(jsonschema.ValidationError):  # the 1.x shape is not a 2.0 file
        jsonschema.validate(bad, schema)


def test_a_result_that_breaks_the_schema_is_refused_naming_the_field(tiny_dataset: Path,
                                                                     tmp_path: Path) -> None:
    _ok("-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "r"))
    path = tmp_path / "r" / "result.json"
    d = json.loads(path.read_text())
    score = d["scores"]["category"]["Attribute"]["R@1"]
    score["valeu"] = score.pop("value")
    path.write_text(json.dumps(d))
    res = runner.invoke(app, ["results", str(tmp_path / "r")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "not a valid cirbench result" in out and "result.json" in out
    assert "scores.category.Attribute.R@1" in out


def test_a_result_of_an_unknown_schema_version_is_refused_naming_it(tmp_path: Path) -> None:
    shutil.copytree(OLD / "circo", tmp_path / "r")
    d = json.loads((tmp_path / "r" / "result.json").read_text())
    d["schema_version"] = "3.0"
    (tmp_path / "r" / "result.json").write_text(json.dumps(d))
    res = runner.invoke(app, ["results", str(tmp_path / "r")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "schema_version '3.0'" in out and "1.x, 2.x" in out, out


def test_results_written_by_older_cirbench_are_still_read_and_rescored(tmp_path: Path) -> None:
    import cirbench
    from cirbench.compare import compare_results
    from cirbench.core.result import Result

    frame = cirbench.load_results([OLD])
    for task in ("circo", "mmlandmarks-g2s"):
        old = json.loads((OLD / task / "result.json").read_text())
        r = Result.read(OLD / task)
        assert r.schema_version == "1.1" and set(r.overall) == set(old["scores"]["overall"])
        for metric, s in old["scores"]["overall"].items():
            row = frame[(frame.task == task) & (frame.group_kind == "overall") & (frame.metric == metric)]
            assert list(row.group) == ["overall"] and row.value.iloc[0] == s["value"]
        # every number is recomputed from run.parquet under the upgraded protocol: the same as recorded
        tests, _ = compare_results(r, r, n_resamples=10)
        for t in tests:
            assert t.mean_a == pytest.approx(old["scores"]["overall"][t.metric]["value"]), (task, t.metric)
    circo = Result.read(OLD / "circo")
    assert circo.protocol["recall_on"] == "target_id" and "aspect" in circo.breakdown_kinds()
    mml = Result.read(OLD / "mmlandmarks-g2s").protocol["scorer"]
    assert mml == {"name": "mmlandmarks-market1501", "params": {"junk_prefix": "index/"}}
    res = runner.invoke(app, ["leaderboard", str(OLD), "--out", str(tmp_path / "board"), "--resamples", "10"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "board" / "leaderboard.csv").is_file()
