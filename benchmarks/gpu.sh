#!/usr/bin/env bash
# The GPU checks of issues 6 and 19 as one prepared script (for `run` on a lent GPU machine, or any CUDA box):
# 1. the CUDA tests (tests/test_models_clip.py -k cuda, test_cuda_paths_match_the_cpu among them);
# 2. ViT-B/32 and ViT-L/14 in bf16: bare forward vs cirbench end to end from JPEG files, decode=pil (threads)
#    and decode=torchvision (nvjpeg): e2e/bare, goal >= 0.90;
# 3. GME-2B's Qwen2-VL-2B in bf16, the same;
# 4. exact top-50 over 1M x 1024-d (1k and 10k queries, fp32 and bf16) against the bare matmul: floor / exact,
#    goal >= 50% for 10k x 1M bf16.
# Everything is random-initialised from configs: no download. Tables go to ${OUT:-gpu-results}/.
# A lent machine has no network: it uses .venv when there is one, else the system python3 (which holds torch,
# transformers, pytest and hypothesis there) with this checkout on PYTHONPATH; nothing is installed.
# Not run on a GPU yet: give it the longest timeout_s (600) and look at what it wrote under $OUT if it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" - <<'EOF' | tee -a "$OUT/gpu.txt"
import importlib, torch
assert torch.cuda.is_available(), "torch sees no GPU"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
missing = [m for m in ("transformers", "pytest", "hypothesis", "PIL", "rich", "typer", "pyarrow", "scipy")
           if importlib.util.find_spec(m) is None]
assert not missing, f"missing python packages: {missing} (carry them as wheels: see the device README)"
import cirbench.retrieval.search, cirbench.models.clip, cirbench.models.gme  # noqa: F401,E401
EOF
"$PY" -m pytest -q -p no:cacheprovider tests/test_models_clip.py -k cuda -rs 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
"$PY" benchmarks/encode.py --device cuda --no-tiny --n 2048 --real-n 2048 --real-reps 2 --batch 256 \
    --workers "$(nproc)" --real-models clip-b32,clip-l14 --dtypes bfloat16 --markdown "$OUT/encode_clip.md"
"$PY" benchmarks/encode.py --device cuda --no-tiny --n 512 --real-n 512 --real-reps 1 --batch 32 \
    --workers "$(nproc)" --real-models gme-2b --dtypes bfloat16 --markdown "$OUT/encode_gme.md"
"$PY" benchmarks/search.py --device cuda --queries 1000 10000 --gallery 1000000 --dims 1024 \
    --dtypes float32 bfloat16 --no-naive --markdown "$OUT/search.md"
