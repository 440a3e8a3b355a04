#!/usr/bin/env bash
# The test suite: real redis-server, MuJoCo, DeepSpeed, MLflow, ZeroMQ and Chromium; no GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}
export RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check .
exec .venv/bin/pytest -q "$@"
