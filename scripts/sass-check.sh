#!/usr/bin/env bash
# The CI check from the machine code (python/sass_check.py): the tensor-core convolution and GEMM
# kernels at most 8 instructions per HMMA in their main loops, no integer division in a product
# kernel's main loop, and every product launch of the benchmark UNet's forward (its plan recorded
# on the emulator by scripts/bench-plan.sh) a block for each of an H100's 132 SMs; first, that the
# rules catch planted faults. Needs the release binary built with `--features cuda` and nvcc
# ($NVCC: the fatbin and its SASS readers; docs/devices.md, “Building with CUDA”). Used by
# .ci/run.
#
#   NVCC=/path/to/nvcc scripts/sass-check.sh [PLAN]      (PLAN: where to keep the launch plan, for
#                                                       python/sass_model.py)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scripts/bench-plan.sh "$work/plan.jsonl"
python3 python/sass_check.py --self-test
python3 python/sass_check.py --plan "$work/plan.jsonl"
if [ $# -gt 0 ]; then cp "$work/plan.jsonl" "$1"; fi
