"""Before/after identity of a restructure: every task fixture under every protocol, plus the demo.

    python scripts/identity_check.py snapshot OUT.json [--demo] [--fixtures DIR]   # on one checkout
    python scripts/identity_check.py compare BEFORE.json AFTER.json

For each registered task and each of its protocols, the task's test fixture (tests/task_fixtures.py) is
evaluated with the `random` baseline and a tiny CLIP saved to disk; SoFT tasks also with `--rerank soft`
and a constraints file. A snapshot keeps each result's scores, protocol and main metric and a hash of
run.parquet's rows, so two checkouts can be compared number by number. Only the public API is used
(cirbench.evaluate, cirbench.get_task), so the same script runs on both sides of a move.

The fixtures and the tiny CLIP are written once to `--fixtures DIR` (default: the system temp folder) and
re-used by every later snapshot: an image's cache key includes its path and mtime, so fixtures written
anew would give the `random` baseline other vectors. The embedding cache is new for every snapshot, so
each side encodes everything itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOLATILE = {"wall_seconds", "seconds", "created", "hardware", "cirbench_version", "timings", "host"}


def _run_hash(path: Path) -> str:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=repr).encode()).hexdigest()


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _record(out: Path) -> dict[str, Any]:
    result = json.loads((out / "result.json").read_text())
    return {"scores": result["scores"], "protocol": _strip(result["protocol"]),
            "main_metric": result["main_metric"], "run": _run_hash(out / "run.parquet")}


def snapshot(dest: Path, demo: bool, fixtures: Path) -> None:
    import cirbench
    try:
        from tests.helpers.tiny import build_tiny_clip
    except ImportError:  # a checkout from before the helpers left the package
        from cirbench.testing.tiny import build_tiny_clip  # type: ignore[no-redef]
    from tests.task_fixtures import WRITERS, fixture_name

    Options = sys.modules[cirbench.evaluate.__module__].EvalOptions
    quiet = dict(progress=False, n_bootstrap=20)
    cases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = fixtures / "clip"
        if not (clip / "config.json").exists():
            build_tiny_clip(clip)
        for spec in cirbench.list_tasks():
            key = fixture_name(spec.name)
            done = fixtures / key / "written"
            data = fixtures / key / "data"
            if not done.exists():
                shutil.rmtree(fixtures / key, ignore_errors=True)
                data = WRITERS[key](data)
                done.write_text(str(data))
            data = Path(done.read_text())
            for protocol in spec.protocols:
                for model in ("random", f"hf-clip:{clip}"):
                    name = f"{spec.name}:{protocol}:{'clip' if 'clip' in model else model}"
                    out = tmp / "out" / name.replace(":", "_")
                    try:
                        cirbench.evaluate(model, spec.name, data_dir=data, protocol=protocol, output=out,
                                          options=Options(**quiet, cache_dir=tmp / "cache"))
                    except ValueError as e:  # e.g. a GPS gallery for a model without a location encoder
                        if "cannot embed" not in str(e):
                            raise
                        cases[name] = {"refused": str(e)}
                        continue
                    cases[name] = _record(out)
                    print(name, json.dumps(cases[name]["scores"]["overall"])[:100], flush=True)
                if spec.name.startswith("soft-") and protocol == spec.protocols[0]:
                    task = cirbench.get_task(spec.name, data_dir=data)
                    cons = fixtures / f"{spec.name}-constraints.json"  # its path is in the protocol
                    cons.write_text(json.dumps({q.id: {"prescriptive": "a red object",
                                                       "proscriptive": "a blue object"}
                                                for q in task.queries}))
                    name = f"{spec.name}:{protocol}:clip+rerank-soft"
                    out = tmp / "out" / name.replace(":", "_")
                    if "rerank" in Options.__dataclass_fields__:  # before the retrieval seam
                        soft = dict(options=Options(**quiet, cache_dir=tmp / "cache", rerank="soft",
                                                    constraints=cons))
                    else:
                        from cirbench.retrieval.registry import get_reranker

                        soft = dict(options=Options(**quiet, cache_dir=tmp / "cache"),
                                    rerankers=[get_reranker("soft", constraints=cons)])
                    cirbench.evaluate(f"hf-clip:{clip}", spec.name, data_dir=data, protocol=protocol,
                                      output=out, **soft)
                    cases[name] = _record(out)
                    print(name, flush=True)
        if demo:
            from typer.testing import CliRunner

            from cirbench.cli import app

            res = CliRunner().invoke(app, ["demo", "--out", str(tmp / "demo"), "--quiet"])
            assert res.exit_code == 0, res.output
            for result in sorted((tmp / "demo").rglob("result.json")):
                cases[f"demo:{result.parent.relative_to(tmp / 'demo')}"] = _record(result.parent)
    dest.write_text(json.dumps(cases, indent=1, sort_keys=True))
    print(f"{len(cases)} results -> {dest}")


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _regular(scores: dict[str, Any]) -> dict[str, Any]:
    """Result schema 1.x kept the overall scores as {metric: Score}; 2.x as {"overall": {metric: Score}}."""
    overall = scores.get("overall") or {}
    if any(isinstance(v, dict) and "value" in v for v in overall.values()):
        return {**scores, "overall": {"overall": overall}}
    return scores


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    for snap in (a, b):
        for case in snap.values():
            if "scores" in case:
                case["scores"] = _regular(case["scores"])
    same = [k for k in a if k in b and a[k] == b[k]]
    differ = [k for k in a if k in b and a[k] != b[k]]
    for k in differ:
        parts = [f for f in ("scores", "protocol", "main_metric", "run", "refused")
                 if a[k].get(f) != b[k].get(f)]
        print(f"DIFFERS {k}: {', '.join(parts)}")
        if "protocol" in parts and "refused" not in parts:
            pa, pb = _leaves(a[k]["protocol"]), _leaves(b[k]["protocol"])
            for leaf in sorted(set(pa) | set(pb)):
                if pa.get(leaf) != pb.get(leaf):
                    print(f"    protocol.{leaf}: {str(pa.get(leaf))[:90]!r} -> {str(pb.get(leaf))[:90]!r}")
    for k in sorted(set(a) ^ set(b)):
        print(f"ONLY IN {'before' if k in a else 'after'}: {k}")
    print(f"{len(same)} identical, {len(differ)} differ, {len(set(a) ^ set(b))} unmatched")
    return 0 if not differ and set(a) == set(b) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["snapshot"]:
        where = sys.argv[sys.argv.index("--fixtures") + 1] if "--fixtures" in sys.argv else None
        snapshot(Path(sys.argv[2]), "--demo" in sys.argv,
                 Path(where or Path(tempfile.gettempdir()) / "cirbench-identity-fixtures"))
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
