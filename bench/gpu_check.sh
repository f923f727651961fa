#!/usr/bin/env bash
# The CUDA paths on a GPU machine, without Docker: bench/gpu_check.py (see its docstring). Under 8 minutes
# on one GPU; prints one table, writes bench/results/gpu_check.json (or $OUT/gpu_check.json when OUT is set,
# as on the lent device machine). Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}/gpu_check.json"
PYTHONPATH=src exec timeout 480 "${PYTHON:-python3}" bench/gpu_check.py --out "$out" "$@"
