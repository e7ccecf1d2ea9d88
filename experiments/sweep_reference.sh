#!/usr/bin/env bash
# The sensitivity to dyn_eta under the reference process — the analogue of the paper's Figure 7c,
# whose code diffuses the history (docs/process.md, "Diffusing the history"): the decisive study's
# recipe (experiments/decisive.sh: train --diffuse-history, 8 000 steps, batch 16, lr 1e-3, 100
# warm-up steps, cosine decay; 8 members, 50 DDIM steps, ddim_eta 0) on seed 0 at dyn_eta 0.1, 0.9
# and 1, beside that study's seed-0 runs at 0.5 and 0 (reused from its folder, with its data and
# its binary). Each forecast of the 64 test sequences is scored and compared with dyn_eta 0 by a
# paired bootstrap (experiments/sweep_table.py). One seed: the decisive study's pixel-CRPS changes
# spread from -1.9% to -17.6% over its three seeds, so differences between dyn_eta values of a few
# percent are not a ranking.
#
#   experiments/sweep_reference.sh      # into experiments/out_decisive (about 2 hours on 2 cores)
#
# Settings (environment): OUT (the decisive study's folder), SWEEP (the further dyn_eta values),
# BIN (default the frozen binary of OUT, experiments/frozen_bin.sh). Finished runs are kept; an
# interrupted one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out_decisive}
SWEEP=${SWEEP:-"0.1 0.9 1"}
mkdir -p "$OUT"
# shellcheck source=frozen_bin.sh
source experiments/frozen_bin.sh
OUT=$OUT BIN=$BIN STEPS=8000 SEEDS=0 ETAS="0.5 0" PROCESSES=reference SENS_PROCESS=reference \
  SENS_ETAS="$SWEEP" LONGER= NO_REPORT=1 experiments/reproduce.sh
python3 experiments/sweep_table.py "$OUT" "$BIN" | tee "$OUT/sweep_table.md"
# the figure (matplotlib): $PY experiments/sweep_plot.py docs/figures
