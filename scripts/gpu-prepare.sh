#!/usr/bin/env bash
# Builds what python/gpu_check.py runs on a machine with an NVIDIA GPU but no Rust toolchain: the
# release binary with its CUDA kernels and the CUDA test binaries, copied into gpu-check/ (about
# 25 MB) with a manifest of where they were built (the tests find their fixtures and the binary
# there; the check script links that path to its own copy of the repository), and the
# machine-code model's prediction of the benchmark forward's kernels (gpu-check/model.json).
#
#   NVCC=/path/to/nvcc scripts/gpu-prepare.sh        # then, on the GPU machine, from the repo root:
#   python3 python/gpu_check.py --dir gpu-check --out OUT
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NVCC:?set NVCC to an nvcc (docs/devices.md, “Building with CUDA”)}"
export NVCC
cargo build --release --features cuda
rm -rf gpu-check
mkdir -p gpu-check/tests
cp target/release/dydiff gpu-check/dydiff
cargo test --release --features cuda --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("ops", "network", "cli"):
        shutil.copy(m["executable"], "gpu-check/tests/" + m["target"]["name"])
        print(m["target"]["name"])
'
python3 -c '
import json, os
json.dump({"manifest_dir": os.getcwd()}, open("gpu-check/manifest.json", "w"))
'
# The machine-code model's prediction of the benchmark UNet's forward (batch 8, 32×32, TF32), for
# gpu_check.py to set beside the measured kernel times: the launch plan recorded on the emulator,
# then python/sass_model.py on it (a few minutes on 2 cores).
scripts/bench-plan.sh gpu-check/plan.jsonl
python3 python/sass_model.py gpu-check/plan.jsonl --json gpu-check/model.json | tail -2
# The kernel lab (benches/kernel_lab.rs): its binary, and its versions' errors on the emulator and
# the model's prediction of each (gpu-check/lab_rows.json), which gpu_check.py joins to the times
# it measures.
cargo bench --features cuda --bench kernel_lab --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernel_lab":
        shutil.copy(m["executable"], "gpu-check/kernel_lab")
'
python3 python/kernel_lab.py --json gpu-check/lab_rows.json | tail -3
du -sh gpu-check
