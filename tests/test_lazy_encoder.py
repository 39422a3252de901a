"""A re-eval whose vectors are all cached loads no weights; a cache miss loads them and encodes.

The proof is behavioural: after the first eval, the model's safetensors file is overwritten with bytes that
are not a checkpoint (same size, same mtime, so the fingerprint, which identifies local weights by names,
sizes and mtimes, is unchanged). A warm re-eval through the CLI still succeeds with the same scores, which
it could not if it read the weights; an eval that needs one new vector then fails on those bytes, and with
the real file back it loads, encodes and caches that vector.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cirbench.cli import app


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("lazy") / "clip")


def _eval(model: str, data: Path, out: Path, cache: Path, *extra: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["eval", "--model", model, "--task", str(data), "--output", str(out),
                                 "--cache-dir", str(cache), "--bootstrap", "0", "--overwrite", *extra])
    return r.exit_code, r.output + (repr(r.exception) if r.exception and r.exit_code else "")


def _scores(out: Path) -> dict[str, object]:
    return dict(json.loads((out / "result.json").read_text())["scores"])


def _forget_queries(cache: Path) -> None:
    """Remove the cached query vectors (the gallery's stay): the next eval has query misses only."""
    for meta in (cache / "embeddings").glob("*/namespace.json"):
        if json.loads(meta.read_text())["role"] == "query":
            shutil.rmtree(meta.parent)


def _spoil(weights: Path) -> bytes:
    """Replace the file's bytes by non-checkpoint bytes of the same size and mtime; return the original."""
    good, st = weights.read_bytes(), weights.stat()
    weights.write_bytes(b"\0" * len(good))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    return good


def _restore(weights: Path, good: bytes) -> None:
    st = weights.stat()
    weights.write_bytes(good)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cached_re_eval_loads_no_weights_and_a_miss_loads_them(
    tiny_dataset: Path, clip_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "clip"
    shutil.copytree(clip_dir, model_dir)
    weights = model_dir / "model.safetensors"
    model, cache, out = f"hf-clip:{model_dir}", tmp_path / "cache", tmp_path / "out"
    code, log = _eval(model, tiny_dataset, out, cache)
    assert code == 0, log
    cold = _scores(out)
    assert len(list((cache / "encoders").glob("*.json"))) == 1

    good = _spoil(weights)
    code, log = _eval(model, tiny_dataset, out, cache)
    assert code == 0, log  # nothing read the weights
    assert _scores(out) == cold
    encoded = json.loads((out / "result.json").read_text())["encoding"]
    assert encoded["document"]["encoded"] == encoded["query"]["encoded"] == 0

    # query vectors not cached: the weights must load, and these bytes are no checkpoint
    _forget_queries(cache)
    code, log = _eval(model, tiny_dataset, tmp_path / "miss", cache)
    assert code != 0 and not (tmp_path / "miss" / "result.json").exists(), log

    _restore(weights, good)
    code, log = _eval(model, tiny_dataset, tmp_path / "miss", cache)
    assert code == 0, log
    assert _scores(tmp_path / "miss") == cold
    encoded = json.loads((tmp_path / "miss" / "result.json").read_text())["encoding"]
    assert encoded["query"]["encoded"] == 3 and encoded["document"]["encoded"] == 0


def test_a_stale_record_stops_the_eval_and_is_removed(
    tiny_dataset: Path, clip_dir: Path, tmp_path: Path
) -> None:
    """A record whose fingerprint the real encoder no longer produces is never used to encode."""
    model_dir = tmp_path / "clip"
    shutil.copytree(clip_dir, model_dir)
    model, cache, out = f"hf-clip:{model_dir}", tmp_path / "cache", tmp_path / "out"
    assert _eval(model, tiny_dataset, out, cache)[0] == 0
    (record,) = (cache / "encoders").glob("*.json")
    data = json.loads(record.read_text())
    data["fingerprint"]["adapter"] = "hf-clip/0"  # as if an older cirbench had written it
    record.write_text(json.dumps(data))
    _forget_queries(cache)
    code, log = _eval(model, tiny_dataset, out, cache)
    assert code != 0 and "run the eval again" in log, log
    assert not record.exists()
    assert _eval(model, tiny_dataset, out, cache)[0] == 0
    assert record.exists()
