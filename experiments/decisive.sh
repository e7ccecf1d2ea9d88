#!/usr/bin/env bash
# The pre-registered decisive experiment (docs/reproduction.md, "Pre-registered: the reference process at 8 000
# steps on three seeds"): the reference-process pair (train --diffuse-history; DyDiff dyn_eta 0.5
# against the standard model, dyn_eta 0) at 8 000 steps on seeds 0, 1 and 2, with the
# reproduction's data and recipe (experiments/reproduce.sh), each run forecast, scored and its
# noise-prediction error measured. Finished runs are kept; an interrupted one resumes from its last
# checkpoint (exactly: docs/process.md, "Resuming").
#
#   experiments/decisive.sh          # into experiments/out_decisive
#
# Settings (environment): OUT, SEEDS, BIN (a dydiff binary; by default a copy of a fresh release
# build, kept in OUT so that later rebuilds cannot change the runs), as in reproduce.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out_decisive}
mkdir -p "$OUT"
# shellcheck source=frozen_bin.sh
source experiments/frozen_bin.sh
OUT=$OUT BIN=$BIN STEPS=8000 SEEDS=${SEEDS:-"0 1 2"} ETAS="0.5 0" PROCESSES=reference \
  SENS_ETAS= LONGER= NO_REPORT=1 experiments/reproduce.sh
