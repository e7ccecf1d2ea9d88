#!/usr/bin/env bash
# The CUDA host path on the stand-in driver library (docs/devices.md, "The stand-in driver"): the
# CUDA tests of ops, network and cli with cuda:0 opened through src/backend/cuda/driver.rs and
# cudarc, the stand-in libcuda.so that build.rs makes (the cuda feature, NVCC set) on
# LD_LIBRARY_PATH. One test at a time: they share one device, whose timings are device-wide.
#
#   NVCC=... scripts/standin-tests.sh [EXTRA TEST FILTER ARGUMENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cargo build --release --features cuda --message-format=json |
  python3 -c '
import json, sys
dirs = [m["out_dir"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "build-script-executed" and "#dydiff@" in m.get("package_id", "")]
print(dirs[-1] if dirs else "")')
if [ ! -e "$out/standin/libcuda.so" ]; then
  echo "the stand-in driver library was not built (is NVCC set? see the cargo warnings)" >&2
  exit 1
fi
LD_LIBRARY_PATH="$out/standin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" DYDIFF_TEST_DEVICE=cuda \
  cargo test --release --features cuda --test ops --test network --test cli -- cuda --test-threads 1 "$@"
