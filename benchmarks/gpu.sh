#!/usr/bin/env bash
# The GPU run of issue 6, as one prepared script (for `run` on a lent GPU machine, or any CUDA box):
# throughput of ViT-B/32, ViT-L/14 and GME-2B (Qwen2-VL-2B) in bf16, bare forward vs cirbench end to end
# from JPEG files, with decode=pil (threads) and decode=torchvision (nvjpeg), then exact top-50 over 1M x 1024-d.
# Everything is random-initialised from configs: no download. Writes its tables under ${OUT:-gpu-results}/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q tests/test_models_clip.py -k cuda 2>&1 | tail -3 | tee "$OUT/cuda_tests.txt"
python benchmarks/encode.py --device cuda --no-tiny --n 2048 --real-n 2048 --real-reps 2 --batch 256 \
    --workers "$(nproc)" --real-models clip-b32,clip-l14 --dtypes bfloat16 --markdown "$OUT/encode_clip.md"
python benchmarks/encode.py --device cuda --no-tiny --n 512 --real-n 512 --real-reps 1 --batch 32 \
    --workers "$(nproc)" --real-models gme-2b --dtypes bfloat16 --markdown "$OUT/encode_gme.md"
python benchmarks/search.py --device cuda --queries 1000 10000 --gallery 1000000 --dims 1024 \
    --dtypes float32 bfloat16 --no-naive --markdown "$OUT/search.md"
