"""Benchmark cirbench.retrieval.search.exact_search (top-k over random unit vectors) against a naive baseline.

Each (method, config) runs in a fresh subprocess so that its peak memory is measured on its own: the
worker builds the data, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs once and
reports ``VmHWM - VmRSS`` at reset, i.e. the extra resident memory the search needed beyond its inputs.
The naive baseline is what one writes first: the full score matrix, then a full stable sort per row;
it runs only where its estimated footprint fits ``--naive-max-gb``.

On a GPU the worker also times the bare score GEMM (`torch.mm` in the search dtype, no top-k): the
"matmul floor"; floor / exact is the share of it the search reaches (issue 19's goal: >= 50% for
10k x 1M x 1024 bf16). For float32 on CPU, a third worker times, in one process on the same data and
with the rounds interleaved (best of ``--reps``), a bare ``faiss.IndexFlatIP`` (built outside the
timing) against cirbench's torch and faiss backends, and prints the ratios (issue 19's goals: torch
<= 1.1x, faiss backend <= 1.05x) and the share of ids that agree with faiss.

    python benchmarks/search.py --quick                      # 1k x 100k x 512, fp32 + bf16
    python benchmarks/search.py --gallery 100000             # every 100k config
    python benchmarks/search.py --gallery 1000000 --queries 1000 --dtypes float32 --budget-s 600
    python benchmarks/search.py --markdown out.md            # also write the table as markdown
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SORT_BYTES_PER_SCORE = 4 + 4 + 8  # fp32 scores, sorted values, int64 indices (+2 for bf16 scores)


@dataclass(frozen=True)
class Config:
    nq: int
    ng: int
    dim: int
    dtype: str
    backend: str
    k: int
    device: str = "cpu"

    @property
    def naive_gb(self) -> float:
        per_score = _SORT_BYTES_PER_SCORE + (2 if self.dtype == "bfloat16" else 0)
        return self.nq * self.ng * per_score / 1e9


# ------------------------------------------------------------------------------------------------ worker


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _unit_vectors(rng: Any, n: int, d: int) -> Any:
    import numpy as np

    x = rng.standard_normal((n, d), dtype=np.float32)
    for a in range(0, n, 65536):  # in place, in chunks: no gallery-sized temporaries
        blk = x[a : a + 65536]
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
    return x


def _ratios(cfg: Config, seed: int, reps: int) -> dict[str, Any]:
    """cirbench's torch and faiss backends against a bare `faiss.IndexFlatIP` on the same data, in this
    process, rounds interleaved (best of `reps` each), so machine load hits all three alike."""
    import faiss
    import numpy as np
    import torch

    from cirbench.retrieval.search import exact_search

    rng = np.random.default_rng(seed)
    gallery = _unit_vectors(rng, cfg.ng, cfg.dim)
    queries = _unit_vectors(rng, cfg.nq, cfg.dim)
    index = faiss.IndexFlatIP(cfg.dim)
    index.add(gallery)  # built outside the timing: the bare baseline at its best
    runs = {
        "faiss": lambda: index.search(queries, cfg.k)[1],
        "torch": lambda: exact_search(queries, gallery, cfg.k, backend="torch").indices,
        "cirbench-faiss": lambda: exact_search(queries, gallery, cfg.k, backend="faiss").indices,
    }
    best = dict.fromkeys(runs, float("inf"))
    ids: dict[str, Any] = {}
    exact_search(queries[:40], gallery[:2000], cfg.k)  # warm kernels
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            ids[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {
        "seconds": best,
        "same_ids": {m: float(np.mean(ids[m] == ids["faiss"])) for m in ("torch", "cirbench-faiss")},
        "threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def _worker(method: str, cfg: Config, seed: int) -> dict[str, Any]:
    import hashlib

    import numpy as np
    import torch

    from cirbench.retrieval.search import exact_search

    rng = np.random.default_rng(seed)
    gallery = _unit_vectors(rng, cfg.ng, cfg.dim)
    queries = _unit_vectors(rng, cfg.nq, cfg.dim)
    cuda = cfg.device.startswith("cuda")
    if cuda:  # a GPU run times the search, not the host-to-device copy of the gallery
        gallery_t = torch.from_numpy(gallery).to(cfg.device)
        queries_t = torch.from_numpy(queries).to(cfg.device)
    exact_search(queries[:40], gallery[:2000], cfg.k, dtype=cfg.dtype, device=cfg.device)  # warm kernels
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if method == "exact" and cuda:
        idx = exact_search(queries_t, gallery_t, cfg.k, dtype=cfg.dtype, device=cfg.device).indices
        torch.cuda.synchronize()
    elif method == "exact":
        idx = exact_search(queries, gallery, cfg.k, dtype=cfg.dtype, backend=cfg.backend).indices
    else:  # naive: full score matrix + full stable sort (the same (score desc, position asc) order)
        dt = torch.float32 if cfg.dtype == "float32" else torch.bfloat16
        with torch.inference_mode():
            scores = (torch.from_numpy(queries).to(dt) @ torch.from_numpy(gallery).to(dt).T).float()
            idx = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : cfg.k].numpy()
    wall = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    floor = _matmul_floor(queries_t, gallery_t, cfg.dtype) if method == "exact" and cuda else None
    return {
        "method": method,
        "wall_s": wall,
        "floor_s": floor,
        "peak_delta_mb": (peak_kb - base_kb) / 1024 if reset else None,
        "inputs_mb": (gallery.nbytes + queries.nbytes) / 2**20,
        "digest": hashlib.sha1(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()[:12],
        "threads": torch.get_num_threads(),
    }


def _matmul_floor(queries: Any, gallery: Any, dtype: str, reps: int = 3) -> float:
    """Seconds of the bare score GEMM on the GPU (best of `reps`): what no exact search can beat. The
    queries go in blocks of 2,048 into one reused output, so a 10k x 1M product fits beside the gallery."""
    import torch

    dt = torch.float32 if dtype == "float32" else torch.bfloat16
    q, g = queries.to(dt), gallery.to(dt)
    step = 2048
    out = torch.empty((min(step, q.shape[0]), g.shape[0]), dtype=dt, device=g.device)
    best = float("inf")
    for _ in range(reps + 1):  # the first round warms up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for a in range(0, q.shape[0], step):
            blk = q[a : a + step]
            torch.mm(blk, g.T, out=out[: blk.shape[0]])
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------------ driver


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _run(method: str, cfg: Config, seed: int, timeout: float, reps: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", method, json.dumps(cfg.__dict__), str(seed),
           "--reps", str(reps)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--gallery", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dims", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--backend", default="torch", choices=["torch", "faiss", "auto"])
    p.add_argument("-k", type=int, default=50)
    p.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the vectors start on the GPU)")
    p.add_argument("--quick", action="store_true", help="1k queries x 100k gallery x 512 dims only")
    p.add_argument("--naive-max-gb", type=float, default=8.0, help="skip the naive run above this estimate")
    p.add_argument("--no-naive", action="store_true")
    p.add_argument("--budget-s", type=float, default=None, help="start no new run after this many seconds")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per-run timeout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    p.add_argument("--no-faiss", action="store_true", help="skip the comparison with a bare IndexFlatIP")
    p.add_argument("--reps", type=int, default=5, help="rounds of the faiss comparison (best of each)")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "CONFIG", "SEED"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        method, cfg_json, seed = a.worker
        cfg = Config(**json.loads(cfg_json))
        out = _ratios(cfg, int(seed), a.reps) if method == "ratios" else _worker(method, cfg, int(seed))
        print(json.dumps(out))
        return
    if a.quick:
        a.queries, a.gallery, a.dims = [1000], [100_000], [512]
    configs = [
        Config(nq, ng, d, dt, a.backend, a.k, a.device)
        for ng in sorted(a.gallery)
        for nq in sorted(a.queries)
        for d in sorted(a.dims)
        for dt in a.dtypes
    ]

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 180)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    rows: list[list[str]] = []
    header = [
        "queries",
        "gallery",
        "dim",
        "dtype",
        "exact s",
        "q/s",
        "peak Δ MB",
        "naive s",
        "speedup",
        "naive peak Δ MB",
        "same top-k",
        "bare faiss s",
        "torch / faiss",
        "cirbench-faiss / faiss",
        "same ids as faiss",
        "matmul floor s",
        "floor / exact",
    ]
    compare = not a.no_faiss and a.device == "cpu" and _has_faiss()
    if not compare:
        console.print("[yellow]no comparison with a bare faiss.IndexFlatIP "
                      "(--no-faiss, a GPU run, or no faiss)[/]")
    for cfg in configs:
        tag = f"{cfg.nq}x{cfg.ng}x{cfg.dim} {cfg.dtype}"
        if a.budget_s is not None and time.perf_counter() - t_start > a.budget_s:
            console.print(f"[yellow]skipped {tag}: time budget spent[/]")
            continue
        console.print(f"running {tag} ...", highlight=False)
        ex = _run("exact", cfg, a.seed, a.timeout_s)
        if "error" in ex:
            rows.append([str(cfg.nq), str(cfg.ng), str(cfg.dim), cfg.dtype, ex["error"], *["-"] * 12])
            continue
        if a.no_naive:
            nv: dict[str, Any] = {"note": "off"}
        elif cfg.naive_gb > a.naive_max_gb:
            nv = {"note": f"skipped (needs ~{cfg.naive_gb:.0f} GB)"}
        else:
            nv = _run("naive", cfg, a.seed, a.timeout_s)
        nv_s = nv.get("wall_s")
        fr: dict[str, Any] = {}
        if compare and cfg.dtype == "float32":
            fr = _run("ratios", cfg, a.seed, a.timeout_s, reps=a.reps)
            if "error" not in fr:
                sec = fr["seconds"]
                console.print(
                    f"  same process, best of {a.reps}: bare IndexFlatIP {sec['faiss']:.3f}s, torch "
                    f"{sec['torch']:.3f}s ({sec['torch'] / sec['faiss']:.2f}x), cirbench faiss "
                    f"{sec['cirbench-faiss']:.3f}s ({sec['cirbench-faiss'] / sec['faiss']:.2f}x); same ids "
                    f"{fr['same_ids']}", highlight=False)
        sec = fr.get("seconds")
        ratio_cells = (
            [f"{sec['faiss']:.2f}", f"{sec['torch'] / sec['faiss']:.2f}x",
             f"{sec['cirbench-faiss'] / sec['faiss']:.2f}x",
             " / ".join(f"{fr['same_ids'][m]:.5f}" for m in ("torch", "cirbench-faiss"))]
            if sec else [fr.get("error", "-"), "-", "-", "-"]
        )
        rows.append(
            [
                f"{cfg.nq:,}",
                f"{cfg.ng:,}",
                str(cfg.dim),
                cfg.dtype,
                _fmt_s(ex["wall_s"]),
                f"{cfg.nq / ex['wall_s']:,.0f}",
                "-" if ex["peak_delta_mb"] is None else f"{ex['peak_delta_mb']:,.0f}",
                nv.get("note") or nv.get("error") or _fmt_s(nv_s),
                f"{nv_s / ex['wall_s']:.1f}x" if nv_s else "-",
                "-" if nv.get("peak_delta_mb") is None else f"{nv['peak_delta_mb']:,.0f}",
                ("yes" if nv["digest"] == ex["digest"] else "NO") if "digest" in nv else "-",
                *ratio_cells,
                _fmt_s(ex.get("floor_s")),
                f"{ex['floor_s'] / ex['wall_s']:.0%}" if ex.get("floor_s") else "-",
            ]
        )
        console.print(
            f"  exact {ex['wall_s']:.2f}s, peak Δ {ex['peak_delta_mb']} MB; naive {nv}", highlight=False
        )

    title = (
        f"exact top-{a.k}, backend={a.backend}, device={a.device}, {os.cpu_count()} CPUs, torch threads "
        f"{ex.get('threads', '?') if configs else '?'}, load avg {load0:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    md = "\n".join(
        [
            f"**{title}**",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    )
    print(md)
    if a.markdown:
        a.markdown.write_text(md + "\n")


if __name__ == "__main__":
    main()
