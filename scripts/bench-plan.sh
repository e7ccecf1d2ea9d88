#!/usr/bin/env bash
# Records the launch plan of one forward (or, with `train`, one training step) of the benchmark
# UNet (python/roofline.py's BENCH configuration, seeded random weights; batch 8, 32×32, the
# default precision) on the emulator:
# every launch, one JSON line each (`DYDIFF_LAUNCH_LOG`, docs/devices.md), into PLAN — what
# python/sass_model.py predicts times from and python/sass_check.py checks. A few minutes on 2
# cores. Needs the release binary built with `--features cuda`. Used by scripts/sass-check.sh and
# scripts/gpu-prepare.sh.
#
#   scripts/bench-plan.sh PLAN [unet|train]
set -euo pipefail
plan=$(realpath -m "$1")
what=${2:-unet}
cd "$(dirname "$0")/.."
unet=$(mktemp -d)
trap 'rm -rf "$unet"' EXIT
python3 -c '
import json, sys
sys.path.insert(0, "python")
from roofline import BENCH
json.dump(dict(BENCH, _class_name="UNet2DModel", sample_size=32), open(sys.argv[1] + "/config.json", "w"))
' "$unet"
rm -f "$plan"
DYDIFF_CUDA_EMULATOR=1 DYDIFF_LAUNCH_LOG="$plan" target/release/dydiff --device cuda \
  bench "$what" --unet "$unet" --batch 8 --size 32 --reps 1 --warmup 0 > /dev/null
