"""A warm re-eval (every vector cached) runs without torch, and its cached search is the computed one.

Importing torch costs more than the rest of a warm eval, so a re-eval of cached vectors reads the search's
result from the cache (cirbench/retrieval/run_cache.py) instead of importing torch to recompute it, and its
scores and bootstrap intervals (cirbench/core/score_cache.py) instead of importing scipy.stats. The
import check runs `cirbench eval` in a fresh interpreter, as a user does (in this process torch is loaded
by other tests already).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from cirbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
WARM = """
import sys
from cirbench.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("LOADED:" + ",".join(m for m in ("torch", "transformers", "scipy.stats") if m in sys.modules))
"""


def _args(data: Path, out: Path, cache: Path, *extra: str, bootstrap: int = 0) -> list[str]:
    return ["eval", "--model", "random", "--task", str(data), "--output", str(out), "--cache-dir", str(cache),
            "--device", "cpu", "--bootstrap", str(bootstrap), "--overwrite", "--quiet", *extra]


def _eval(*args: str) -> None:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output + repr(r.exception)


def _rows(out: Path) -> list[dict[str, object]]:
    return pq.read_table(out / "run.parquet").to_pylist()


def _scores(out: Path) -> object:
    return json.loads((out / "result.json").read_text())["scores"]


def test_a_warm_re_eval_imports_no_torch(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _eval(*_args(tiny_dataset, tmp_path / "cold", cache))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", WARM, *_args(tiny_dataset, tmp_path / "warm", cache)],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LOADED:\n" in r.stdout, r.stdout  # neither torch nor transformers was imported
    assert _rows(tmp_path / "warm") == _rows(tmp_path / "cold")
    assert _scores(tmp_path / "warm") == _scores(tmp_path / "cold")


def test_the_cached_search_is_keyed_by_the_vectors_and_a_bad_file_is_recomputed(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _eval(*_args(tiny_dataset, tmp_path / "a", cache, "--no-cache"))  # computed, nothing stored
    assert not (cache / "searches").exists()
    _eval(*_args(tiny_dataset, tmp_path / "b", cache))
    (stored,) = (cache / "searches").glob("*.npz")
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")

    stored.write_bytes(b"not an npz file")
    _eval(*_args(tiny_dataset, tmp_path / "c", cache))
    assert _rows(tmp_path / "c") == _rows(tmp_path / "a")
    assert stored.read_bytes()[:2] == b"PK"  # written again, whole

    _eval(*_args(tiny_dataset, tmp_path / "d", cache, "--option", "seed=1"))  # other vectors: another key
    assert len(list((cache / "searches").glob("*.npz"))) == 2
    assert _rows(tmp_path / "d") != _rows(tmp_path / "a")
    _eval(*_args(tiny_dataset, tmp_path / "e", cache, "--top-k", "3"))  # another depth: another key
    assert len(list((cache / "searches").glob("*.npz"))) == 3


def test_a_warm_re_eval_reads_its_intervals_without_scipy_and_the_key_covers_the_bootstrap(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _eval(*_args(tiny_dataset, tmp_path / "plain", cache, "--no-cache", bootstrap=200))  # nothing stored
    assert not (cache / "scores").exists()
    _eval(*_args(tiny_dataset, tmp_path / "cold", cache, bootstrap=200))
    (stored,) = (cache / "scores").glob("*.json")
    cold = _scores(tmp_path / "cold")
    assert cold == _scores(tmp_path / "plain")
    overall = cold["overall"]["overall"]  # type: ignore[index]
    assert any(s["ci_low"] < s["ci_high"] for s in overall.values())  # real intervals, not points
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", WARM, *_args(tiny_dataset, tmp_path / "warm", cache,
                                                           bootstrap=200)],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LOADED:\n" in r.stdout, r.stdout  # no torch, no transformers, no scipy.stats
    assert _scores(tmp_path / "warm") == cold

    # another seed or resample count is another key, and what it stores is what a cache-less run computes
    _eval(*_args(tiny_dataset, tmp_path / "seed", cache, "--seed", "7", bootstrap=200))
    _eval(*_args(tiny_dataset, tmp_path / "n", cache, bootstrap=300))
    assert len(list((cache / "scores").glob("*.json"))) == 3
    fresh = _scores(tmp_path / "seed")
    _eval(*_args(tiny_dataset, tmp_path / "seed-plain", cache, "--seed", "7", "--no-cache", bootstrap=200))
    assert fresh == _scores(tmp_path / "seed-plain")

    stored.write_text("{not json")  # a damaged file is recomputed and written again
    _eval(*_args(tiny_dataset, tmp_path / "again", cache, bootstrap=200))
    assert _scores(tmp_path / "again") == cold and json.loads(stored.read_text())["format"] == 1
