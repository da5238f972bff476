#!/usr/bin/env bash
# The GPU checks of the attention kernels, as one script for a lent GPU (docs/benchmarks.md, "GPU"):
# 1. the Triton kernel tests on CUDA tensors (tests/conftest.py sets no interpreter when CUDA exists);
# 2. the attention benchmark against SDPA's flash backend, N = 16384 and 32768 (issue 5's GPU goal):
#    headline rows at the default cdf 0.99 and calibrated at rel L1 0.02 on held-out inputs
#    (sparse_sage@cal0.02, as on CPU), plus a labelled speed/accuracy curve at cdf 0.9.
# Usage: bash bench/gpu_attention.sh [OUT_DIR]   (writes attention_gpu.json and the log there)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
nvidia-smi -L
python -m pytest -q tests/vdiff/attention/test_triton.py 2>&1 | tee "$out/test_triton_gpu.log"
python bench/attention.py --device cuda --dtype bfloat16 --tokens 16384 32768 --repeat 5 --curve 0.9 --calibrate 0.02 \
  --json "$out/attention_gpu.json" 2>&1 | tee "$out/attention_gpu.log"
