#!/usr/bin/env bash
# The CI check from the machine code (python/sass_check.py): the tensor-core convolution and GEMM
# kernels at most 8 instructions per HMMA in their main loops, no integer division in a product
# kernel's main loop, and every product launch of the benchmark UNet's forward (batch 8, 32×32,
# TF32; its plan recorded on the emulator, a few minutes on 2 cores) a block for each of an
# H100's 132 SMs; first, that the rules catch planted faults. Needs the release binary built with `--features cuda` and nvcc ($NVCC: the
# fatbin and its SASS readers; docs/devices.md, “Building with CUDA”). Used by .ci/run.
#
#   NVCC=/path/to/nvcc scripts/sass-check.sh [PLAN]      (PLAN: where to keep the launch plan, for
#                                                       python/sass_model.py)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/unet"
python3 -c '
import json, sys
sys.path.insert(0, "python")
from roofline import BENCH
json.dump(dict(BENCH, _class_name="UNet2DModel", sample_size=32), open(sys.argv[1] + "/config.json", "w"))
' "$work/unet"
DYDIFF_CUDA_EMULATOR=1 DYDIFF_LAUNCH_LOG="$work/plan.jsonl" target/release/dydiff --device cuda \
  bench unet --unet "$work/unet" --batch 8 --size 32 --reps 1 --warmup 0 > /dev/null
python3 python/sass_check.py --self-test
python3 python/sass_check.py --plan "$work/plan.jsonl"
if [ $# -gt 0 ]; then cp "$work/plan.jsonl" "$1"; fi
