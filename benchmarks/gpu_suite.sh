#!/usr/bin/env bash
# Everything that needs the lent GPU, in one call: kernel numerics, kernel timings, model timings.
# Usage on the device machine (repo root):  bash benchmarks/gpu_suite.sh [OUTDIR] [--quick]
# Runs on the image's own torch/triton/timm with src/ on PYTHONPATH (no install).
set -uo pipefail
OUTDIR=${1:-${OUT:-/tmp/gpu_suite}}
QUICK=${2:-}
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUTDIR/card.txt"
python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)" \
  | tee -a "$OUTDIR/card.txt"
echo "== kernel numerics on the GPU (pytest -m gpu) =="
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -25 | tee "$OUTDIR/gpu_tests.log"
echo "== large-kernel depthwise conv benchmark =="
timeout 240 python3 benchmarks/large_kernel_dwconv.py $QUICK --out "$OUTDIR/dwconv.md" 2>&1 | tail -60
echo "== model benchmark vs timm =="
timeout 240 python3 benchmarks/bench_models.py $QUICK --out "$OUTDIR/models.md" 2>&1 | tail -40
