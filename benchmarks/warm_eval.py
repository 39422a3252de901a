"""A warm re-eval against a cold one: what an eval costs when every vector is cached (issue 19).

Each case runs `cirbench eval` in fresh processes, in this order:
- cold: empty embedding cache, no encoder record: the weights load and every vector is encoded;
- warm, eager: every vector cached, the encoder record removed, so the model is built (its weights loaded)
  as before lazy loading: the baseline that shows what the lazy path saves;
- warm: every vector cached and the record there: no weights load (best of `--reps`).
For each it reports the process's wall time (start to exit: interpreter, imports, dataset, search, metrics)
and the eval's own `provenance.wall_time_s` from result.json (evaluate() alone), then cold/warm and
eager/warm ratios of both. The issue's goal is cold/warm >= 20.

Cases:
- `fusion`: the default model (cirbench-fusion) on synthetic-mini; the dataset is built (or copied from
  the default cache) into the benchmark's own cache root first, untimed;
- `gme-2b`: a random-weight Qwen2-VL of GME-2B's real size (2.2B parameters, saved in bfloat16, 4.4 GB;
  `benchmarks/encode.py`'s builder), through `gme:DIR --dtype bfloat16`, on a 5-image, 3-query dataset
  (a 2B model encodes slowly on a CPU; the weights' load is what the warm run skips).

    python benchmarks/warm_eval.py                      # both cases (the first builds the 4.4 GB model)
    python benchmarks/warm_eval.py --cases fusion --reps 3
    python benchmarks/warm_eval.py --work /tmp/warm     # keep the built model and dataset for next time
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cli(args: list[str], cache: Path, out: Path) -> tuple[float, float]:
    """(process wall s, evaluate() wall s) of one `cirbench eval` with `cache` as its cache root."""
    env = {**os.environ, "CIRBENCH_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "cirbench.cli", "eval", *args, "--output", str(out), "--overwrite",
           "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    result = json.loads((out / "result.json").read_text())
    enc = result["encoding"]
    encoded = enc["document"]["encoded"] + enc["query"]["encoded"]
    print(f"    {wall:7.2f} s wall, eval {result['provenance']['wall_time_s']:7.2f} s, {encoded} encoded",
          flush=True)
    return wall, float(result["provenance"]["wall_time_s"])


def _case(name: str, args: list[str], cache: Path, work: Path, reps: int) -> dict[str, Any]:
    out = work / f"out-{name}"
    for sub in ("embeddings", "encoders"):
        shutil.rmtree(cache / sub, ignore_errors=True)
    print(f"{name}: cold", flush=True)
    cold = _cli(args, cache, out)
    print(f"{name}: warm, eager (record removed: the weights load, the vectors come from the cache)")
    shutil.rmtree(cache / "encoders")
    eager = _cli(args, cache, out)
    print(f"{name}: warm (no weights load)")
    warm = [_cli(args, cache, out) for _ in range(reps)]
    best = (min(w for w, _ in warm), min(e for _, e in warm))
    return {"case": name, "cold": cold, "eager": eager, "warm": best}


def _fusion(work: Path) -> tuple[list[str], Path]:
    cache = work / "cache-fusion"
    built = cache / "datasets" / "synthetic-mini-0"
    if not built.is_dir():
        from cirbench.core.cache import default_cache_dir

        mine = default_cache_dir() / "datasets" / "synthetic-mini-0"
        if mine.is_dir():
            shutil.copytree(mine, built)
        else:  # build it once, untimed
            subprocess.run([sys.executable, "-c", "from cirbench.tasks.synthetic import ensure_built; "
                            "ensure_built('mini', progress=False)"],
                           env={**os.environ, "CIRBENCH_CACHE": str(cache)}, check=True)
    return ["--model", "cirbench-fusion", "--task", "synthetic-mini", "--bootstrap", "1000"], cache


def _gme(work: Path) -> tuple[list[str], Path]:
    from encode import build_real_gme

    model = work / "gme-2b"
    if not (model / "model.safetensors.index.json").exists() and not (model / "model.safetensors").exists():
        print("building a random GME-2B-sized model (once) ...", flush=True)
        build_real_gme(work)
    data = work / "tiny-dataset"
    if not (data / "manifest.json").exists():
        _write_tiny_dataset(data)
    return ["--model", f"gme:{model}", "--task", str(data), "--dtype", "bfloat16", "--batch-size", "4"], (
        work / "cache-gme")


def _write_tiny_dataset(root: Path) -> None:
    import io

    from PIL import Image

    from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
    from cirbench.core.types import Protocol

    def png(rgb: tuple[int, int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), rgb).save(buf, format="PNG")
        return buf.getvalue()

    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (0, 255, 255)}
    corpus = [ImageRecord(id=k, image=png(v)) for k, v in colours.items()]
    queries = [QueryRecord(id=f"q{i}", reference_id=r, text=t, relevant_ids=[g])
               for i, (r, t, g) in enumerate([("a", "make it green", "b"), ("b", "make it blue", "c"),
                                              ("c", "make it cyan", "e")])]
    write_dataset(root, {"test": SplitData(queries=queries, corpus=corpus)}, name="tiny",
                  protocol=Protocol(metrics=("R@1", "R@2"), main_metric="R@1", top_k=4,
                                    exclude_reference=True))


CASES = {"fusion": _fusion, "gme-2b": _gme}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="fusion,gme-2b", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--reps", type=int, default=3, help="warm runs per case (the best counts)")
    p.add_argument("--work", type=Path, default=None, help="work dir (kept); default a temp dir (removed)")
    a = p.parse_args(argv)
    names = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="cirbench-warm-")
    work = a.work or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    try:
        rows = []
        for name in names:
            args, cache = CASES[name](work)
            rows.append(_case(name, args, cache, work, a.reps))
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"\n{os.cpu_count()} CPUs, load avg {load0:.1f} -> {os.getloadavg()[0]:.1f}; seconds as "
          "process wall / evaluate() wall")
    print("| case | cold | warm, eager | warm | cold / warm | eager / warm |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        c, e, w = r["cold"], r["eager"], r["warm"]
        cells = [f"{x[0]:.2f} / {x[1]:.2f}" for x in (c, e, w)]
        print(f"| {r['case']} | {' | '.join(cells)} | {c[0] / w[0]:.1f}x / {c[1] / w[1]:.1f}x | "
              f"{e[0] / w[0]:.1f}x / {e[1] / w[1]:.1f}x |")


if __name__ == "__main__":
    main()
