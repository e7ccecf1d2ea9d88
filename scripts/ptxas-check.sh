#!/usr/bin/env bash
# Compiles every kernel of kernels/ for sm_80 and sm_90 with `ptxas -v` and prints, per kernel and
# architecture, its registers, shared memory, stack frame and spills; fails if any kernel spills
# registers (none may, in the hot kernels). Needs nvcc ($NVCC, or on
# PATH; docs/devices.md, “Building with CUDA”). Used by .ci/run.
#
#   NVCC=/path/to/nvcc scripts/ptxas-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
ARCHS=${ARCHS:-"80 90"}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
for src in kernels/*.cu; do
  for arch in $ARCHS; do
    "$NVCC" -cubin -O3 -std=c++17 -I kernels -arch="sm_$arch" -Xptxas -v "$src" -o /dev/null 2>&1 |
      awk -v file="$(basename "$src")" -v arch="sm_$arch" '
        /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); k = substr($0, RSTART + 1, RLENGTH - 2) }
        /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
        /Used [0-9]+ registers/ {
          regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
          smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
          if (k != "") printf "%-22s %-7s %-14s %4s regs %6s B smem %4s B stack %4s/%s B spilled\n", k, arch, file, regs, smem, stack, spill_st, spill_ld
          k = ""
        }' >> "$report"
  done
done
cat "$report"
if awk '{ split($(NF-2), s, "/"); if (s[1] + 0 > 0 || s[2] + 0 > 0) bad = 1 } END { exit !bad }' "$report"; then
  echo "ptxas-check: register spills above" >&2
  exit 1
fi
echo "ptxas-check: $(wc -l < "$report") kernel builds, no spills"
