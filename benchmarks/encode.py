"""Encoding throughput: cirbench's adapters and encode loop against the bare forward pass of the same model.

Everything runs on random-initialised models built from configs (no weights are downloaded): the tiny test
models of every adapter (where decoding and preprocessing dominate), and real-size architectures
(`--real-models`: CLIP ViT-B/32 by default, CLIP ViT-L/14, and GME-2B's Qwen2-VL-2B), saved and loaded back
through `hf-clip:` / `gme:` like a hub snapshot, in float32 and bfloat16. The workload
is a gallery: N JPEG files of photo size (500x375, smooth synthetic content) written to a temp dir.

For each model, in the same process and on the same inputs:
- bare: the model's own forward on inputs prepared beforehand (decoded, preprocessed, tokenised, batched,
  already on the device); for the VLM adapters the exact inputs the adapter passes to the model are captured
  and replayed;
- encode: `encoder.encode` on pre-decoded, preprocessed batches (the adapter's own overhead: prompts,
  tokenisation, batching, normalisation);
- e2e pil: `cirbench.retrieval.encode.encode_items` from the JPEG files (thread-pool PIL decode +
  preprocess, no cache);
- e2e tv: the same with the two-tower adapters' decode=torchvision (hf-clip, open_clip): the threads read
  bytes, the batch is decoded with torchvision.io.decode_jpeg on the model's device (nvjpeg on CUDA) and
  resized/normalised there.
Each rate is the best of `--reps` rounds that interleave them, after one untimed round. e2e/bare (the
issue's goal: >= 0.90) is the share of the bare model's rate the whole pipeline keeps, encode/bare the share
the adapter alone keeps; by wall clock and by this process's CPU time (all threads), which other processes
on a shared machine disturb far less. Beside them, the decode rates of the same files: PIL decode+resize
with 1 and N threads, and cirbench's decode=torchvision pixel path (decode_jpeg + resize + crop + normalise
to 224 px, in batches, on `--device`; file reads not timed). On a shared machine, expect wall-clock noise of
tens of percent; the load average at the start is printed with the results. bfloat16 is fast on CPUs with
AVX512_BF16/AMX and very slow (emulated) on AVX2-only CPUs: see torch's "CPU capability" in the header line.

    python benchmarks/encode.py                       # CPU: tiny adapters + ViT-B/32 fp32/bf16
    python benchmarks/encode.py --n 256 --batch 64 --markdown out.md
    python benchmarks/encode.py --no-tiny --n 256 --real-n 256 --dtypes float32   # ViT-B/32 only
    python benchmarks/encode.py --device cuda --no-tiny --n 4096 --real-n 4096 --real-reps 3 --batch 256 \
        --real-models clip-b32,clip-l14,gme-2b --dtypes bfloat16   # the GPU run (benchmarks/gpu.sh)
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
from functools import cache, partial
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
    """items/s by wall clock: bare, encode, e2e pil[, e2e tv]"""
    cpu: list[float]
    """items per CPU-second of this process (all its threads): bare, encode, e2e pil[, e2e tv]"""

    def cells(self) -> list[str]:
        (bw, ew, pw), (bc, ec, pc) = self.wall[:3], self.cpu[:3]
        tv = len(self.wall) > 3
        tw, tc = (self.wall[3], self.cpu[3]) if tv else (0.0, 0.0)

        def if_tv(cell: str) -> str:
            return cell if tv else "-"

        return [self.model, self.size, self.dtype, rate(bw), rate(ew), rate(pw), if_tv(rate(tw)),
                f"{pw / bw:.2f}", if_tv(f"{tw / bw:.2f}"), f"{pc / bc:.2f}", if_tv(f"{tc / bc:.2f}"),
                f"{ec / bc:.2f}"]


def rate(x: float) -> str:
    """Items/s with three significant digits at least (a 2B VLM on a CPU runs well under 1 item/s)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


HEADER = ["model", "size", "dtype", "bare it/s", "encode it/s", "e2e pil it/s", "e2e tv it/s",
          "e2e/bare pil wall", "e2e/bare tv wall", "e2e/bare pil CPU", "e2e/bare tv CPU", "encode/bare CPU"]
TV_FAMILIES = ("hf-clip", "open_clip")
"""Adapters with the decode=torchvision option."""


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


def tv_decode_rate(paths: Sequence[Path], device: str, batch: int, side: int = 224) -> float:
    """Images/s of cirbench's decode=torchvision pixel path (decode_jpeg on `device` + resize, crop and
    normalise there, as for a 224 px CLIP), in batches; file reads are not timed (worker threads do them)."""
    import torch

    from cirbench.core.types import Item
    from cirbench.models import _images as I

    spec = I.PixelSpec(resize="shortest", size=(side, side), crop=(side, side), crop_round=False,
                       interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    data = [I.read_encoded(Item(p.stem, image=p)) for p in paths]
    chunks = [data[i:i + batch] for i in range(0, len(data), batch)]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    I.pixels(data[:2], spec, device)  # warm-up (nvjpeg handles, kernels)
    sync()
    t0 = time.perf_counter()
    for c in chunks:
        I.pixels(c, spec, device)
    sync()
    return len(paths) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- models
REAL_CLIP = {
    "clip-b32": {},  # CLIPConfig() defaults are OpenAI's ViT-B/32
    "clip-l14": {"projection_dim": 768,
                 "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                 "num_hidden_layers": 12},
                 "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                   "num_hidden_layers": 24, "patch_size": 14, "image_size": 224}},
}
"""Architectures of openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14 (their config.json)."""
QWEN2VL_2B_TEXT = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                   "max_position_embeddings": 32768,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                       "mrope_section": [16, 24, 24]}}
QWEN2VL_2B_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
                     "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
"""Qwen2-VL-2B-Instruct (GME-2B's backbone): a 1.5B Qwen2 language model and a 675M ViT (its config.json)."""
REAL_MODELS = (*REAL_CLIP, "gme-2b")


def build_real_clip(root: Path, arch: str = "clip-b32") -> Path:
    """A random CLIPModel of a real architecture + a 224 px CLIPProcessor, saved like a hub snapshot."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.helpers.tiny import _clip_tokenizer

    out = root / arch
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=_clip_tokenizer(77)).save_pretrained(out)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**REAL_CLIP[arch])).eval().save_pretrained(out)
    return out


def build_real_gme(root: Path) -> Path:
    """A random Qwen2-VL of GME-2B's size, with the tiny test model's tokenizer and processor (speed does
    not depend on the vocabulary's contents). Built in bfloat16, as GME runs on a GPU (4.4 GB on disk)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from tests.helpers.tiny import build_tiny_gme

    out = build_tiny_gme(root / "gme-2b")  # tokenizer, processors, and the special-token ids in config.json
    cfg = Qwen2VLConfig.from_pretrained(out)
    text = {**cfg.text_config.to_dict(), **QWEN2VL_2B_TEXT}
    text.pop("layer_types", None)  # per-layer list of the tiny model: rebuilt for 28 layers
    vision = {**cfg.vision_config.to_dict(), **QWEN2VL_2B_VISION}
    cfg = Qwen2VLConfig(**{**cfg.to_dict(), "text_config": text, "vision_config": vision})
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # half the host memory of a float32 build
    try:
        Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    finally:
        torch.set_default_dtype(default)
    return out


def tiny_cases(root: Path, families: Sequence[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, model name, options) for the tiny model of every adapter (or of those in `families`)."""
    from tests.helpers.tiny import (
        build_tiny_blip2,
        build_tiny_clip,
        build_tiny_gme,
        build_tiny_llava_next,
        build_tiny_open_clip,
    )

    budget = {"min_image_tokens": 4, "max_image_tokens": 4}
    qwen = cache(lambda: build_tiny_gme(root / "qwen2vl"))  # one model for gme, rzen and vlm2vec
    builders: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
        "hf-clip": lambda: (f"hf-clip:{build_tiny_clip(root / 'clip')}", {}),
        "open_clip": lambda: (f"open_clip:local-dir:{build_tiny_open_clip(root / 'open_clip')}", {}),
        "blip2": lambda: (f"blip2:{build_tiny_blip2(root / 'blip2')}", {}),
        "gme": lambda: (f"gme:{qwen()}", budget),
        "rzen": lambda: (f"rzen:{qwen()}", budget),
        "vlm2vec": lambda: (f"vlm2vec:{qwen()}", budget),
        "e5v": lambda: (f"e5v:{build_tiny_llava_next(root / 'llava')}", {}),
    }
    unknown = sorted(set(families or ()) - set(builders))
    if unknown:
        raise SystemExit(f"unknown --families {unknown}; choose from {list(builders)}")
    return [(label, *build()) for label, build in builders.items() if not families or label in families]


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
    if family == "open_clip":
        pv = [torch.stack(b).to(enc.device, enc._in_dtype) for b in batches]
        return [partial(m.encode_image, x) for x in pv]
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
    from cirbench.core.types import Item
    from cirbench.models import get_model
    from cirbench.models.base import Batch
    from cirbench.retrieval.encode import encode_items

    enc: Any = get_model(name, device=device, dtype=dtype, **opts)
    inst = enc.spec.default_instructions.get("document")
    items = [Item(p.stem, image=p) for p in paths]
    prepared = [enc.preprocess(it.load_image()) for it in items]
    chunks = [(items[i:i + batch], prepared[i:i + batch]) for i in range(0, len(items), batch)]

    def encode_all() -> None:
        for its, pre in chunks:
            enc.encode(Batch(its, pre), role="document", instruction=inst)

    def e2e(encoder: Any) -> None:
        encode_items(encoder, items, role="document", instruction=inst, batch_size=batch, workers=workers,
                     cache=None, progress=False)

    fns = bare_forward(label, enc, [list(pre) for _, pre in chunks], encode_all)
    runs: list[Callable[[], Any]] = [lambda: [f() for f in fns], encode_all, partial(e2e, enc)]
    if label in TV_FAMILIES:
        runs.append(partial(e2e, get_model(name, device=device, dtype=dtype, decode="torchvision", **opts)))
    wall, cpu = best_rates(runs, len(items), reps)
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
    ap.add_argument("--real-n", type=int, default=16, help="gallery images for the real-size models")
    ap.add_argument("--real-reps", type=int, default=1, help="timed rounds for the real-size models")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="dtypes for the real-size models")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny adapter models")
    ap.add_argument("--families", help="comma-separated tiny adapters to run (default: all)")
    ap.add_argument("--no-real", action="store_true", help="skip the real-size models")
    ap.add_argument("--real-models", default="clip-b32",
                    help=f"real-size random models, comma-separated: {', '.join(REAL_MODELS)}")
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
            f"({args.real_n} for {args.real_models}), batch {args.batch}, best of {args.reps} rounds "
            f"({args.real_reps} for real sizes), {args.workers} decode workers, "
            f"load average at start {os.getloadavg()[0]:.1f}")
    print(info, flush=True)
    out: list[str] = [info, ""]
    with tempfile.TemporaryDirectory(prefix="cirbench-bench-") as tmp:
        root = Path(tmp)
        (root / "jpg").mkdir()
        paths = write_jpegs(root / "jpg", args.n)
        dec = [["PIL decode+resize 224, 1 thread", f"{max(decode_rate(paths, 1) for _ in range(3)):.1f}"],
               [f"PIL decode+resize 224, {args.workers} threads",
                f"{max(decode_rate(paths, args.workers) for _ in range(3)):.1f}"]]
        dec.append([f"decode=torchvision pixels 224 (decode_jpeg, resize, crop, normalise) on {args.device}",
                    f"{max(tv_decode_rate(paths, args.device, args.batch) for _ in range(3)):.1f}"])
        out += [table(["decode", "img/s"], dec), ""]
        print(out[-2], flush=True)
        rows: list[Row] = []
        cases: list[tuple[str, str, dict[str, Any], str, str]] = []
        if not args.no_tiny:
            families = args.families.split(",") if args.families else None
            cases += [(lb, nm, o, "tiny", "float32") for lb, nm, o in tiny_cases(root / "tiny", families)]
        for arch in [] if args.no_real else args.real_models.split(","):
            if arch not in REAL_MODELS:
                raise SystemExit(f"unknown --real-models {arch!r}; choose from {list(REAL_MODELS)}")
            if arch == "gme-2b":
                real = build_real_gme(root / "real")
                cases += [("gme", f"gme:{real}", {}, arch, dt) for dt in args.dtypes.split(",")]
            else:
                real = build_real_clip(root / "real", arch)
                cases += [("hf-clip", f"hf-clip:{real}", {}, arch, dt) for dt in args.dtypes.split(",")]
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
