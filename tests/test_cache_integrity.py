"""The embedding cache never serves a damaged vector, and signals never lose or duplicate a cache part.

Damage is done to the files on disk (a flipped byte, a part with NaN, a part of the wrong width) and the
eval is run again through the CLI; signals are real signals sent to a real `python` subprocess.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
from cirbench.core.run import read_run_table
from cirbench.core.types import Protocol

from .conftest import png

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _eval(dataset: Path, out: Path, cache: Path) -> str:
    res = runner.invoke(app, ["eval", "-m", "random", "-t", str(dataset), "-o", str(out), "-q",
                              "--bootstrap", "0", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.replace("\n", "").split())  # as one line: rich wraps long paths


def _document_parts(cache: Path) -> list[Path]:
    """The parts of the gallery's namespace (the one whose parts hold the 5 corpus vectors)."""
    for ns in sorted((cache / "embeddings").iterdir()):
        parts = sorted(ns.glob("part-*.parquet"))
        if parts and sum(pq.read_metadata(p).num_rows for p in parts) == 5:
            return parts
    raise AssertionError("no gallery namespace")


def test_a_flipped_byte_is_reported_and_re_encoded(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _eval(tiny_dataset, tmp_path / "o1", cache)
    (part,) = _document_parts(cache)
    data = bytearray(part.read_bytes())
    vec = pq.read_table(part).column("vector").combine_chunks().values.to_numpy()[:4].astype(np.float32)
    at = data.find(vec.tobytes())
    assert at >= 0  # random floats are stored as they are: flip an exponent bit of the first one
    data[at + 3] ^= 0x40
    part.write_bytes(bytes(data))

    output = _eval(tiny_dataset, tmp_path / "o2", cache)
    assert part.name in output and "not served" in output
    assert (part.parent / (part.name + ".bad")).is_file()
    # the re-encoded vectors are the same, so the new part has the same bytes, checksum and name
    assert hashlib.sha256(part.read_bytes()).hexdigest()[:32] in part.name
    first = read_run_table(tmp_path / "o1" / "run.parquet")
    again = read_run_table(tmp_path / "o2" / "run.parquet")
    assert again.column("ranked_ids").to_pylist() == first.column("ranked_ids").to_pylist()
    assert again.column("scores").to_pylist() == first.column("scores").to_pylist()
    result = __import__("json").loads((tmp_path / "o2" / "result.json").read_text())
    assert result["encoding"]["document"]["encoded"] == 5
    assert result["encoding"]["document"]["cache_parts_rejected"] == [
        {"part": str(part), "reason": "its checksum does not match its bytes"}]


def _write_part(directory: Path, keys: list[str], vectors: np.ndarray, seq: int) -> Path:
    """A part in the documented format: parquet (key, fixed-size vector), named by its bytes' SHA-256."""
    flat = pa.array(vectors.astype(np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"key": pa.array(keys, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    path = directory / f"part-{seq:06d}-{hashlib.sha256(data).hexdigest()[:32]}.parquet"
    path.write_bytes(data)
    return path


def test_non_finite_and_wrong_width_parts_are_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _eval(tiny_dataset, tmp_path / "o1", cache)
    (part,) = _document_parts(cache)
    t = pq.read_table(part)
    keys = t.column("key").to_pylist()
    dim = t.column("vector").type.list_size
    part.unlink()  # the damaged parts below are now the only source of these keys
    nan = np.full((len(keys), dim), np.nan)
    narrow = np.ones((len(keys), dim - 1))
    bad = [_write_part(part.parent, keys, nan, 0), _write_part(part.parent, keys, narrow, 1)]

    output = _eval(tiny_dataset, tmp_path / "o2", cache)
    for p in bad:
        assert p.name in output, output
        assert (p.parent / (p.name + ".bad")).is_file()
    assert "non-finite" in output and f"width {dim - 1}" in output
    first = read_run_table(tmp_path / "o1" / "run.parquet").column("ranked_ids").to_pylist()
    assert read_run_table(tmp_path / "o2" / "run.parquet").column("ranked_ids").to_pylist() == first


# ------------------------------------------------------------------------------------------------------------
# Signals, in a real subprocess
# ------------------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _gallery(root: Path, n: int = 40) -> Path:
    corpus = [ImageRecord(id=f"g{i}", image=png((i, 3 * i % 256, 7)), caption=f"item {i}") for i in range(n)]
    queries = [QueryRecord(id="q0", reference_id="g0", text="like it", relevant_ids=["g1"])]
    return write_dataset(root, {"test": SplitData(queries=queries, corpus=corpus)}, name="slow",
                         protocol=Protocol(metrics=("R@1",), main_metric="R@1", top_k=5))


SLOW_EVAL = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import cirbench
    from cirbench.evaluation import EvalOptions
    from cirbench.models.baselines import RANDOM, RandomEncoder

    class Slow(RandomEncoder):
        """The stock random model (same fingerprint), 0.2 s a batch; says when 3 batches are done."""
        n = 0
        def encode(self, batch, *, role, instruction=None):
            Slow.n += 1
            if Slow.n == 4:
                Path(sys.argv[4]).write_text("3 batches encoded")
            time.sleep(0.2)
            return super().encode(batch, role=role, instruction=instruction)

    cirbench.evaluate(Slow(RANDOM), sys.argv[1], output=sys.argv[3], options=EvalOptions(
        progress=False, batch_size=1, workers=0, cache_dir=sys.argv[2], n_bootstrap=0))
''')


def test_sigterm_flushes_what_is_encoded(tmp_path: Path) -> None:
    import cirbench
    from cirbench.evaluation import EvalOptions

    dataset = _gallery(tmp_path / "slow")
    cache, out, marker = tmp_path / "cache", tmp_path / "out", tmp_path / "marker"
    script = tmp_path / "slow_eval.py"
    script.write_text(SLOW_EVAL)
    proc = subprocess.Popen([sys.executable, str(script), str(dataset), str(cache), str(out), str(marker)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, "the encode never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 143, (proc.returncode, log)
    assert "Traceback" not in log, log
    flushed = sum(pq.read_metadata(p).num_rows for p in cache.rglob("part-*.parquet"))
    assert flushed >= 3, "SIGTERM lost the encoded vectors"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    assert not (out / "result.json").exists()

    result = cirbench.evaluate("random", str(dataset), output=tmp_path / "again",
                               options=EvalOptions(progress=False, cache_dir=cache, n_bootstrap=0))
    assert result.encoding["document"]["from_cache"] == flushed
    assert result.encoding["document"]["encoded"] == 40 - flushed
    cirbench.evaluate("random", str(dataset), output=tmp_path / "fresh",
                      options=EvalOptions(progress=False, use_cache=False, n_bootstrap=0))
    assert read_run_table(tmp_path / "again" / "run.parquet").column("scores").to_pylist() == \
        read_run_table(tmp_path / "fresh" / "run.parquet").column("scores").to_pylist()


SIGINT_IN_FLUSH = textwrap.dedent('''
    import os, signal, sys
    from cirbench.core import cache as C
    from cirbench.retrieval.encode import encode_items
    from cirbench.models.baselines import RANDOM, RandomEncoder
    from cirbench.core.types import Item

    write_part = C.EmbeddingCache.put
    def put(self, keys, vectors):
        out = write_part(self, keys, vectors)
        if not getattr(put, "done", False):  # Ctrl-C lands just as the first flush has written its part
            put.done = True
            os.kill(os.getpid(), signal.SIGINT)
        return out
    C.EmbeddingCache.put = put

    items = [Item(id=f"i{i}", text=f"text {i}") for i in range(12)]
    cache = C.EmbeddingCache(sys.argv[1], {"model": "random", "role": "document", "instruction": None})
    encode_items(RandomEncoder(RANDOM), items, role="document", cache=cache, batch_size=2, flush_every=4,
                 progress=False, workers=0)
''')


def test_sigint_during_a_flush_never_writes_a_part_twice(tmp_path: Path) -> None:
    script = tmp_path / "interrupt.py"
    script.write_text(SIGINT_IN_FLUSH)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], env=_env(),
                          capture_output=True, timeout=120)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in proc.stderr, proc.stderr.decode()
    parts = sorted((tmp_path / "cache").rglob("part-*.parquet"))
    keys = [k for p in parts for k in pq.read_table(p).column("key").to_pylist()]
    assert len(keys) == len(set(keys)), f"{len(parts)} parts hold {len(keys)} rows of {len(set(keys))} keys"
    assert len(parts) == 1 and len(keys) == 4  # the flush that was running, once
    assert not list(tmp_path.rglob("*.tmp"))
