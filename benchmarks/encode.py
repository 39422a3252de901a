"""Encoding throughput: cirbench's adapters and encode loop against the bare forward pass of the same model.

Everything runs on random-initialised models built from configs (no weights are downloaded): the tiny test
models of every adapter (where decoding and preprocessing dominate), and a real-size CLIP ViT-B/32
(`CLIPModel(CLIPConfig())`, saved and loaded back through `hf-clip:`), in float32 and bfloat16. The workload
is a gallery: N JPEG files of photo size (500x375, smooth synthetic content) written to a temp dir.

For each model, in the same process and on the same inputs:
- bare: the model's own forward on inputs prepared beforehand (decoded, preprocessed, tokenised, batched);
  for the VLM adapters the exact inputs the adapter passes to the model are captured and replayed;
- encode: `encoder.encode` on pre-decoded, preprocessed batches (the adapter's own overhead: prompts,
  tokenisation, batching, normalisation);
- e2e: `cirbench.encode.encode_items` from the JPEG files (thread-pool decode + preprocess, no cache).
Each rate is the best of `--reps` rounds that interleave the three, after one untimed round. bare/e2e
(above 1: cirbench is slower than the bare model) is what the whole pipeline costs on top of the model,
bare/encode what the adapter alone costs; both by wall clock and by this process's CPU time (all threads),
which other processes on a shared machine disturb far less. Beside them: the PIL decode+resize rate of
the same files with 1 and N threads, and (with `--device cuda`) torchvision's GPU JPEG decode. On a shared
machine, expect wall-clock noise of tens of percent; the load average at the start is printed with the
results. bfloat16 is fast on CPUs with AVX512_BF16/AMX and very slow (emulated) on AVX2-only CPUs: see
torch's "CPU capability" in the header line.

    python benchmarks/encode.py                       # CPU: tiny adapters + ViT-B/32 fp32/bf16
    python benchmarks/encode.py --n 256 --batch 64 --markdown out.md
    python benchmarks/encode.py --device cuda         # GPU path (needs CUDA; untested on a CPU-only box)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Row:
    model: str
    size: str
    dtype: str
    wall: list[float]
    """items/s by wall clock: bare, encode, e2e"""
    cpu: list[float]
    """items per CPU-second of this process (all its threads): bare, encode, e2e"""

    def cells(self) -> list[str]:
        (bw, ew, xw), (bc, ec, xc) = self.wall, self.cpu
        return [self.model, self.size, self.dtype, f"{bw:.1f}", f"{ew:.1f}", f"{xw:.1f}", f"{bw / xw:.2f}",
                f"{bc / xc:.2f}", f"{bc / ec:.2f}"]


HEADER = ["model", "size", "dtype", "bare it/s", "encode it/s", "e2e it/s", "bare/e2e wall", "bare/e2e CPU",
          "bare/encode CPU"]


# ----------------------------------------------------------------------------- inputs
def write_jpegs(root: Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields + edges), so decode cost resembles real galleries."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        low = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).copy()
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        arr[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 255, 3)
        p = root / f"img{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def decode_rate(paths: Sequence[Path], threads: int, side: int = 224) -> float:
    """Images/s for PIL open + RGB + bicubic resize, with `threads` threads."""
    from PIL import Image

    def one(p: Path) -> Any:
        with Image.open(p) as im:
            return im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)

    t0 = time.perf_counter()
    if threads <= 1:
        for p in paths:
            one(p)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - t0)


def gpu_decode_rate(paths: Sequence[Path], side: int = 224) -> float:
    """Images/s for torchvision.io.decode_jpeg on CUDA + GPU resize (file reads not timed). Untested here."""
    import torch
    import torchvision.io as tio
    from torchvision.transforms.v2 import functional as F

    data = [tio.read_file(str(p)) for p in paths]
    tio.decode_jpeg(data[:2], device="cuda")  # warm-up (nvjpeg handles)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    imgs = tio.decode_jpeg(data, device="cuda")
    _ = [F.resize(im, [side, side], antialias=True) for im in imgs]
    torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- models
def build_real_clip(root: Path) -> Path:
    """CLIPModel(CLIPConfig()) (ViT-B/32 sizes) + a 224 px CLIPProcessor, saved like a hub snapshot."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from cirbench.testing.tiny import _clip_tokenizer

    out = root / "clip-b32"
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=_clip_tokenizer(77)).save_pretrained(out)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(out)
    return out


def tiny_cases(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, model name, options) for the tiny model of every adapter."""
    from cirbench.testing import build_tiny_clip, build_tiny_gme
    from cirbench.testing.tiny import build_tiny_blip2, build_tiny_llava_next

    qwen = build_tiny_gme(root / "qwen2vl")
    budget = {"min_image_tokens": 4, "max_image_tokens": 4}
    return [("hf-clip", f"hf-clip:{build_tiny_clip(root / 'clip')}", {}),
            ("blip2", f"blip2:{build_tiny_blip2(root / 'blip2')}", {}),
            ("gme", f"gme:{qwen}", budget), ("rzen", f"rzen:{qwen}", budget),
            ("vlm2vec", f"vlm2vec:{qwen}", budget),
            ("e5v", f"e5v:{build_tiny_llava_next(root / 'llava')}", {})]


def capture_calls(module: Any, run: Callable[[], Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The (args, kwargs) of every call to `module` while `run()` runs: the adapter's exact model inputs."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


def bare_forward(family: str, enc: Any, batches: list[list[Any]], encode_all: Callable[[], Any]
                 ) -> list[Callable[[], Any]]:
    """One no-argument function per batch, each running the model's forward on prepared inputs only."""
    import torch

    m = enc.model
    if family == "hf-clip":
        pv = [torch.cat([p["pixel_values"] for p in b]).to(enc.device, enc._in_dtype) for b in batches]
        return [partial(m.get_image_features, pixel_values=x) for x in pv]
    if family == "blip2":
        def run_blip2(x: Any) -> Any:
            img = m.vision_model(pixel_values=x).last_hidden_state
            q = m.query_tokens.expand(img.shape[0], -1, -1)
            att = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
            h = m.qformer(query_embeds=q, encoder_hidden_states=img, encoder_attention_mask=att)
            return m.vision_projection(h.last_hidden_state.to(m.vision_projection.weight.dtype))

        pv = [torch.cat(b).to(enc.device, enc._pix_dtype) for b in batches]
        return [partial(run_blip2, x) for x in pv]
    module = m.model if family == "e5v" else m  # the module each adapter calls
    return [partial(module, *a, **k) for a, k in capture_calls(module, encode_all)]


def best_rates(fns: Sequence[Callable[[], Any]], n_items: int, reps: int) -> tuple[list[float], list[float]]:
    """Items per wall-second and per CPU-second of each function, best of `reps` rounds.

    Rounds interleave the functions, so that load from other processes hits them alike; one untimed round
    comes first (on this VM a process takes seconds of work to reach a steady speed). CPU time (this
    process, all threads) is what the work costs whatever else runs on the machine; wall time is what a user
    waits.
    """
    import torch

    wall = [float("inf")] * len(fns)
    cpu = [float("inf")] * len(fns)
    with torch.inference_mode():
        for r in range(reps + 1):
            for i, fn in enumerate(fns):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if r:
                    wall[i] = min(wall[i], time.perf_counter() - t0)
                    cpu[i] = min(cpu[i], time.process_time() - c0)
    return [n_items / w for w in wall], [n_items / c for c in cpu]


def bench_model(label: str, name: str, opts: dict[str, Any], size: str, dtype: str, paths: list[Path],
                batch: int, workers: int, device: str, reps: int) -> Row:
    from cirbench.encode import encode_items
    from cirbench.models import get_model
    from cirbench.models.base import Batch
    from cirbench.types import Item

    enc: Any = get_model(name, device=device, dtype=dtype, **opts)
    inst = enc.spec.default_instructions.get("document")
    items = [Item(p.stem, image=p) for p in paths]
    prepared = [enc.preprocess(it.load_image()) for it in items]
    chunks = [(items[i:i + batch], prepared[i:i + batch]) for i in range(0, len(items), batch)]

    def encode_all() -> None:
        for its, pre in chunks:
            enc.encode(Batch(its, pre), role="document", instruction=inst)

    def e2e() -> None:
        encode_items(enc, items, role="document", instruction=inst, batch_size=batch, workers=workers,
                     cache=None, progress=False)

    fns = bare_forward(label, enc, [list(pre) for _, pre in chunks], encode_all)
    wall, cpu = best_rates([lambda: [f() for f in fns], encode_all, e2e], len(items), reps)
    return Row(label, size, dtype, wall, cpu)


# ----------------------------------------------------------------------------- report
def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="gallery images (JPEG files)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode threads (N)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--reps", type=int, default=3, help="timed rounds for the tiny models (the best is kept)")
    ap.add_argument("--real-n", type=int, default=16, help="gallery images for the real-size ViT-B/32")
    ap.add_argument("--real-reps", type=int, default=1, help="timed rounds for the real-size ViT-B/32")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="dtypes for the real-size ViT-B/32")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny adapter models")
    ap.add_argument("--no-real", action="store_true", help="skip the real-size ViT-B/32")
    ap.add_argument("--markdown", type=Path, help="also write the tables here")
    args = ap.parse_args(argv)

    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    info = (f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}), "
            f"transformers {transformers.__version__}, device {args.device}, "
            f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, {args.n} JPEGs 500x375 "
            f"({args.real_n} for ViT-B/32), batch {args.batch}, best of {args.reps} rounds ({args.real_reps} "
            f"for ViT-B/32), {args.workers} decode workers, load average at start {os.getloadavg()[0]:.1f}")
    print(info, flush=True)
    out: list[str] = [info, ""]
    with tempfile.TemporaryDirectory(prefix="cirbench-bench-") as tmp:
        root = Path(tmp)
        (root / "jpg").mkdir()
        paths = write_jpegs(root / "jpg", args.n)
        dec = [["PIL decode+resize 224, 1 thread", f"{max(decode_rate(paths, 1) for _ in range(3)):.1f}"],
               [f"PIL decode+resize 224, {args.workers} threads",
                f"{max(decode_rate(paths, args.workers) for _ in range(3)):.1f}"]]
        if args.device.startswith("cuda"):
            dec.append(["torchvision decode_jpeg on CUDA + resize", f"{gpu_decode_rate(paths):.1f}"])
        out += [table(["decode", "img/s"], dec), ""]
        print(out[-2], flush=True)
        rows: list[Row] = []
        cases: list[tuple[str, str, dict[str, Any], str, str]] = []
        if not args.no_tiny:
            cases += [(lb, nm, o, "tiny", "float32") for lb, nm, o in tiny_cases(root / "tiny")]
        if not args.no_real:
            real = build_real_clip(root / "real")
            cases += [("hf-clip", f"hf-clip:{real}", {}, "ViT-B/32", dt) for dt in args.dtypes.split(",")]
        for label, name, opts, size, dtype in cases:
            t0 = time.perf_counter()
            tiny = size == "tiny"
            row = bench_model(label, name, opts, size, dtype, paths if tiny else paths[: args.real_n],
                              args.batch, args.workers, args.device, args.reps if tiny else args.real_reps)
            rows.append(row)
            print(" ".join(row.cells()), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        out.append(table(HEADER, [r.cells() for r in rows]))
    print()
    print("\n".join(out))
    if args.markdown:
        args.markdown.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
