#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the embedded default, offline:
# build synthetic-mini, score the default model and the baselines, print and plot per category.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cirbench demo --out demo "$@"
