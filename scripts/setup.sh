#!/usr/bin/env bash
# Create .venv with everything cirbench and its tests need. Idempotent: re-running installs nothing new.
# torch and torchvision are pinned as a pair (GME's processor, open_clip and Qwen-Image-Edit need torchvision);
# a bare `torch` would pull a multi-GB build that does not match torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[all,dev]"
