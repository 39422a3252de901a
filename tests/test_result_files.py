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
