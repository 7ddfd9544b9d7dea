#!/usr/bin/env bash
# Everything that needs the lent GPU, in one call of at most ~9 minutes, the unmeasured must-shows first:
#   1. RepLKNet-31B training step, our kernel vs F.conv2d            (large_kernel_dwconv.py --model-only)
#   2. the model comparison against timm                            (bench_models.py)
#   3. kernel numerics on the GPU                                    (pytest -m gpu)
#   4. the op table of the large-kernel conv                         (large_kernel_dwconv.py --no-model)
# Each step has its own timeout (sum 540 s), so a slow step cannot starve the ones after it, and each writes
# its table to OUTDIR as it goes. Usage on the device machine, repo root:
#   bash benchmarks/gpu_suite.sh [OUTDIR] [--quick]
# Runs on the image's own torch/triton/timm with src/ on PYTHONPATH (no install).
set -uo pipefail
OUTDIR=${1:-${OUT:-/tmp/gpu_suite}}
QUICK=${2:-}
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUTDIR/card.txt"
python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)" \
  | tee -a "$OUTDIR/card.txt"
echo "== 1. RepLKNet-31B training step =="
timeout 120 python3 benchmarks/large_kernel_dwconv.py --model-only --out "$OUTDIR/replknet_step.md" 2>&1 | tail -12
echo "== 2. models vs timm =="
timeout 240 python3 benchmarks/bench_models.py $QUICK --out "$OUTDIR/models.md" 2>&1 | tail -30
echo "== 3. kernel numerics on the GPU (pytest -m gpu) =="
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -15 | tee "$OUTDIR/gpu_tests.log"
echo "== 4. large-kernel depthwise conv, op table =="
timeout 90 python3 benchmarks/large_kernel_dwconv.py --no-model --quick --out "$OUTDIR/dwconv.md" 2>&1 | tail -20
