#!/usr/bin/env bash
# One-GPU benchmark: training throughput fp32 vs bf16 AMP (+ channels_last) and decoding throughput.
# A few minutes on one GPU; writes the "gpu" section of docs/benchmarks.md.
#   bash bench/gpu.sh            (uses .venv/bin/python if present)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: no CUDA GPU visible to torch; nothing measured" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 600 "$PY" bench/gpu.py "$@"
