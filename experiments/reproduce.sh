#!/usr/bin/env bash
# Dynamical Diffusion against the standard diffusion model (dyn_eta 0) on generated 2-D
# turbulence, end to end: data, training (same network, budget and seeds for every model), 8-member
# forecasts with 50 DDIM steps on held-out sequences, scores, the networks' noise-prediction error,
# and the tables and figures of docs/reproduction.md. By default, the 2×2 comparison of {the paper's process
# (docs/process.md, "Forward process": only the future diffused), the reference implementation's
# (docs/process.md, "Diffusing the history": train --diffuse-history)} × {DyDiff dyn_eta 0.5,
# standard dyn_eta 0} on seeds 0 and 1, then the sensitivity to dyn_eta (the paper's Figure 7c:
# 0, 0.1, 0.5, 0.9, 1) with the paper's process on seed 0, then the reference process's two models
# at twice the budget (do the all-frames models score worse because they are less trained?):
# 13 training runs, about 5 hours on 2 cores.
#
#   experiments/reproduce.sh                 # everything, into experiments/out
#   PROCESSES=paper SENS_ETAS= LONGER= experiments/reproduce.sh
#                                            # the paper's process only (about 80 minutes)
#   STEPS=1500 TRAIN_SEQ=192 TEST_SEQ=16 PROCESSES=paper SENS_ETAS= LONGER= \
#     OUT=experiments/out_short experiments/reproduce.sh
#                                            # the shorter budget of docs/reproduction.md (about 30 minutes)
#
# Settings (environment): OUT, STEPS, BATCH, LR, SEEDS, ETAS, PROCESSES (paper, reference),
# SENS_ETAS (the further dyn_eta values of the sensitivity study, none to skip it), SENS_PROCESS,
# SENS_SEEDS, LONGER (runs PROCESS:DYN_ETA:SEED to train for LONGER_STEPS steps, default twice
# STEPS, into folders ending in _steps{N}; none to skip them), RES, TRAIN_SEQ, TEST_SEQ, BIN (a
# dydiff binary to use instead of building one, e.g. a copy that later rebuilds cannot change) and
# PY (a Python with matplotlib for the figures, default: python/env.sh's) and NO_REPORT (set: the
# runs only, no tables or figures). Finished runs are kept;
# an interrupted one resumes. The tables go to OUT/table.md, the figures to OUT/figures.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
SEEDS=${SEEDS:-"0 1"}
ETAS=${ETAS:-"0.5 0"}
PROCESSES=${PROCESSES:-"paper reference"}
SENS_ETAS=${SENS_ETAS-"0.1 0.9 1"}
SENS_PROCESS=${SENS_PROCESS:-paper}
SENS_SEEDS=${SENS_SEEDS:-${SEEDS%% *}}
LONGER=${LONGER-"reference:0.5:${SEEDS%% *} reference:0:${SEEDS%% *}"}
LONGER_STEPS=${LONGER_STEPS:-$((2 * STEPS))}
RES=${RES:-32}
TRAIN_SEQ=${TRAIN_SEQ:-768}
TEST_SEQ=${TEST_SEQ:-64}
HISTORY=4
FUTURE=6

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/dydiff
fi
mkdir -p "$OUT"

# Training sequences (16 frames, so every window of 10 frames has 7 starts) and held-out test
# sequences (4 history + 6 future frames) from other seeds of the same flow.
[ -f "$OUT/train.npy" ] || $BIN data navier-stokes --out "$OUT/train.npy" --samples "$TRAIN_SEQ" --frames 16 --resolution "$RES" --seed 1
[ -f "$OUT/test.npy" ] || $BIN data navier-stokes --out "$OUT/test.npy" --samples "$TEST_SEQ" --frames $((HISTORY + FUTURE)) --resolution "$RES" --seed 2

# One run: train, forecast the held-out sequences, score, and measure the noise-prediction error.
# A fourth argument trains for that many steps instead of STEPS, into a folder ending in _steps{N}.
run() {
  local process=$1 eta=$2 seed=$3 steps=${4:-$STEPS} flag run resume
  case $process in
    paper) flag="" ;;
    reference) flag="--diffuse-history" ;;
    *) echo "PROCESSES: expected paper and/or reference, found $process" >&2; exit 2 ;;
  esac
  run="$OUT/${process}_eta${eta}_seed${seed}${4:+_steps$4}"
  if [ ! -f "$run/eval.json" ]; then
    resume=""
    [ -f "$run/train_state.safetensors" ] && resume="--resume"
    $BIN train --data "$OUT/train.npy" --out "$run" --history $HISTORY --future $FUTURE \
      --dyn-eta "$eta" $flag --steps "$steps" --batch "$BATCH" --lr "$LR" --warmup-steps 100 \
      --cosine --seed "$seed" --log-every 50 --checkpoint-every 500 $resume
    $BIN sample --model "$run" --input "$OUT/test.npy" --out "$run/forecast.npy" \
      --members 8 --steps 50 --ddim-eta 0 --seed "$seed" --batch 16
    $BIN eval --forecast "$run/forecast.npy" --truth "$OUT/test.npy" --json "$run/eval.json" > "$run/eval.txt"
  fi
  # the diagnostic: noise-prediction error on the held-out windows at fixed timesteps
  [ -f "$run/noise.json" ] || $BIN bench noise --model "$run" --data "$OUT/test.npy" --seed "$seed" > "$run/noise.json"
}

for seed in $SEEDS; do
  for process in $PROCESSES; do
    for eta in $ETAS; do run "$process" "$eta" "$seed"; done
  done
done
for seed in $SENS_SEEDS; do
  for eta in $SENS_ETAS; do run "$SENS_PROCESS" "$eta" "$seed"; done
done
for cell in $LONGER; do
  IFS=: read -r process eta seed <<< "$cell"
  run "$process" "$eta" "$seed" "$LONGER_STEPS"
done
# NO_REPORT: runs only (a study with its own report, e.g. experiments/decisive.sh)
[ -z "${NO_REPORT:-}" ] || exit 0

python3 experiments/table.py "$OUT" "$ETAS" "$SENS_PROCESS" | tee "$OUT/table.md"
PY=${PY:-$(python/env.sh | tail -1)}
"$PY" experiments/plot.py "$OUT" "$OUT/figures" "$ETAS" "$SENS_PROCESS"
echo "tables: $OUT/table.md, figures: $OUT/figures/"
