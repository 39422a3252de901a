#!/usr/bin/env bash
# Regenerate what the repo publishes from what cirbench computes here, offline:
#   leaderboards/  the synthetic-mini results of the default model and the baselines, plus reported rows
#   data_cards/    the card of every registered benchmark (hand-written notes in each card are kept)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cirbench demo --out runs/demo --quiet
cirbench leaderboard runs/demo --out leaderboards --reported leaderboards/reported.csv
cirbench card --all --out data_cards
