"""Edits per second through the EDIR build against the bare diffusers call, in the same process.

The overhead ratio is (pipeline seconds per edit) / (bare seconds per edit); the goal is under 1.1. Both sides
run the same loaded pipeline, the same images, prompts, seeds and batch shape (one call per source with all
its edits). The pipeline side is the whole `run_edir` (pool scan and hashing, templates, PNG encoding, atomic
unit writes, export with data card and contact sheet), model loading excluded on both sides. Rows alternate
(bare, pipeline, bare, ...) and the best of `--repeats` is kept, which damps the noise of a shared machine.

By default the editor is a TINY RANDOM InstructPix2Pix (tests.helpers.edit_pipelines, 2 steps), which makes
each edit ~100x cheaper than a real one: the ratio measured with it is an upper bound of the overhead a real
editor sees. `--model` takes a hub id or directory to measure a real pipeline instead.

    python benchmarks/build.py                                   # tiny pipeline, 64 px, CPU
    python benchmarks/build.py --model timbrooks/instruct-pix2pix --size 512 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bare(editor: Any, images: list[Any], prompts: list[list[str]], seeds: list[list[int]]) -> float:
    """The diffusers call alone: one batched call per source, per-edit CPU generators."""
    import torch

    t0 = time.perf_counter()
    for img, ps, ss in zip(images, prompts, seeds, strict=True):
        gens = [torch.Generator("cpu").manual_seed(s) for s in ss]
        editor.pipe(prompt=ps, image=[img] * len(ps), generator=gens, output_type="pil", **editor.call)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="hub id or directory (default: a tiny random InstructPix2Pix)"
    )
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--edits", type=int, default=4, help="edits per source (one batched call per source)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cirbench.builders.edir import run_edir
    from cirbench.builders.edir.common import prepare
    from cirbench.builders.edir.editors import DiffusersEditor
    from cirbench.builders.edir.instructions import plan_subcategories
    from cirbench.builders.edir.sources import open_pool
    from cirbench.llm.templates import SUBCATEGORIES
    from tests.helpers.edit_pipelines import build_tiny_ip2p, write_image_folder

    tmp = Path(tempfile.mkdtemp(prefix="cirbench-bench-build-"))
    try:
        model = args.model or str(build_tiny_ip2p(tmp / "tiny-ip2p"))
        folder = write_image_folder(tmp / "pool", args.sources, size=args.size, duplicates=0)
        editor = DiffusersEditor(model, device=args.device, call={"num_inference_steps": args.steps})
        subs = [s for s in SUBCATEGORIES if s != "Complex"]  # no partial edits: exactly `edits` per source
        cfg: dict[str, Any] = {
            "pipeline": "edir",
            "seed": 0,
            "sources": {"min_size": 8},
            "dedup": {"method": "dhash"},
            "instructions": {"subcategories": subs, "per_source": args.edits},
            "editor": {"model": model, "size": args.size, "multiple_of": 8},
            "verify": {"embedding": {"enabled": False}},
            "negatives": {"partial_edits": False},
        }
        # the bare side gets exactly the pipeline's inputs: same resized images, template prompts and seeds
        from cirbench.builders.edir.instructions import make_instructions

        pool = open_pool(str(folder))
        images, prompts, seeds = [], [], []
        for sid in pool.ids:
            img = prepare(pool.image(sid), args.size, 8)
            planned = plan_subcategories(sid, subs, args.edits, 0)
            _, edits, _ = make_instructions(sid, b"", planned, None, {"partial_edits": False}, "", 0)
            images.append(img)
            prompts.append([e.instruction for e in edits])
            seeds.append([e.seed for e in edits])
        n_edits = sum(len(p) for p in prompts)
        bare(editor, images[:1], prompts[:1], seeds[:1])  # warm-up: first-call costs on both sides

        def pipeline(k: int, *, embedding: bool = False, lookahead: int = 2) -> float:
            out = tmp / f"out{k}-{int(embedding)}-{lookahead}"
            c = {**cfg, "work": {"lookahead": lookahead}}
            if embedding:
                c["verify"] = {
                    "embedding": {
                        "enabled": True,
                        "model": "random",
                        "unrelated": 8,
                        "min_margin": None,
                        "min_direction": None,
                    }
                }
            inside = [0.0]
            orig = editor.edit

            def timed(image: Any, ps: Any, ss: Any) -> Any:
                t = time.perf_counter()
                try:
                    return orig(image, ps, ss)
                finally:
                    inside[0] += time.perf_counter() - t

            editor.edit = timed  # type: ignore[method-assign,assignment]
            t0 = time.perf_counter()
            try:
                run_edir(c, out, sources=str(folder), progress=False, editor=editor)
            finally:
                del editor.edit
            dt = time.perf_counter() - t0
            outside[name_of(embedding, lookahead)].append(dt - inside[0])
            shutil.rmtree(out)
            shutil.rmtree(out.with_name(out.name + ".work"))
            return dt

        def name_of(embedding: bool, lookahead: int) -> str:
            if embedding:
                return "pipeline+embedding check"
            return "pipeline" if lookahead else "pipeline, lookahead 0"

        outside: dict[str, list[float]] = {
            "pipeline": [],
            "pipeline, lookahead 0": [],
            "pipeline+embedding check": [],
        }
        rows: dict[str, list[float]] = {
            "bare": [],
            "pipeline": [],
            "pipeline, lookahead 0": [],
            "pipeline+embedding check": [],
        }
        for k in range(args.repeats):
            rows["bare"].append(bare(editor, images, prompts, seeds))
            rows["pipeline"].append(pipeline(k))
            rows["pipeline, lookahead 0"].append(pipeline(k, lookahead=0))
            rows["pipeline+embedding check"].append(pipeline(k, embedding=True))
        best = {name: min(v) for name, v in rows.items()}
        label = f"TINY random InstructPix2Pix ({args.steps} steps)" if args.model is None else args.model
        print(
            f"editor: {label}, {editor.pipeline_class}; {args.sources} sources x {args.edits} edits = "
            f"{n_edits} edits at {args.size}px; device {args.device}, {args.threads} torch thread(s); "
            f"best of {args.repeats}"
        )
        print(f"{'run':<28}{'seconds':>10}{'edits/s':>10}{'ratio':>8}{'outside editor':>16}   (all repeats)")
        for name, t in best.items():
            out_s = f"{statistics.median(outside[name]):.2f} s" if name in outside else "–"
            print(
                f"{name:<28}{t:>10.2f}{n_edits / t:>10.2f}{t / best['bare']:>8.3f}{out_s:>16}   "
                f"{', '.join(f'{x:.2f}' for x in rows[name])}"
            )
        print(
            "outside editor: median wall time of run_edir not spent inside the editor's calls (pool scan, "
            "PNG encoding, checks, writes, export), the overhead independent of the machine's noise"
        )
        median = statistics.median(rows["pipeline"]) / statistics.median(rows["bare"])
        print(f"median ratio pipeline/bare: {median:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
