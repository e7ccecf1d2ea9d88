#!/usr/bin/env bash
# The built-in model (assets/default): the DyDiff recipe at dyn_eta DYN_ETA (0: the standard diffusion
# model, chosen on validation data by experiments/select_eta.sh; the paper's process) on
# generated 2-D turbulence at 32×32 with circular padding (the flow is periodic), the network
# predicting the velocity v (prediction_type v_prediction: its error does not grow as 1/√ᾱ at the
# noisiest timesteps, so more DDIM steps stay stable; README, “Sampling steps”), trained by the
# reproduction's recipe (experiments/reproduce.sh: 4 000 steps, batch 16, lr 1e-3, 100 warm-up
# steps, cosine decay, seed 0), then the sampler's defaults chosen on held-out *validation*
# sequences (another seed of the flow than the test sequences): fair CRPS and spread-skill ratio
# for DDIM steps × ddim_eta (experiments/defaults_table.py). About an hour on 2 cores (the data
# 10 minutes, training 20–30, the sweep 20; twice the sweep with BEFORE).
#
#   experiments/builtin.sh                  # into experiments/out_builtin
#   OUT=DIR STEPS=N experiments/builtin.sh  # elsewhere, or another budget
#
# Settings (environment): OUT, STEPS, DYN_ETA (default 0, chosen by experiments/select_eta.sh on
# validation data), PADDING (circular or zeros), PREDICTION (v_prediction or epsilon), BIN (a dydiff binary to use
# instead of building one), SWEEP_STEPS, SWEEP_ETAS, VAL_SEQ, BEFORE (see below). Finished parts are kept; an
# interrupted training run resumes. To install the result: copy OUT/model/{dydiff.json,
# scheduler,unet} to assets/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out_builtin}
STEPS=${STEPS:-4000}
DYN_ETA=${DYN_ETA:-0}
PADDING=${PADDING:-circular}
PREDICTION=${PREDICTION:-v_prediction}
SWEEP_STEPS=${SWEEP_STEPS:-"10 20 50 100 200"}
SWEEP_ETAS=${SWEEP_ETAS:-"0 1"}
VAL_SEQ=${VAL_SEQ:-16}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/dydiff
fi
mkdir -p "$OUT"

# the reproduction's training sequences (seed 1) and test sequences (seed 2); validation: seed 3
[ -f "$OUT/train.npy" ] || $BIN data navier-stokes --out "$OUT/train.npy" --samples 768 --frames 16 --resolution 32 --seed 1
[ -f "$OUT/val.npy" ] || $BIN data navier-stokes --out "$OUT/val.npy" --samples "$VAL_SEQ" --frames 10 --resolution 32 --seed 3

model="$OUT/model"
if [ ! -f "$model/train.done" ]; then
  resume=""
  [ -f "$model/train_state.safetensors" ] && resume="--resume"
  $BIN train --data "$OUT/train.npy" --out "$model" --history 4 --future 6 --dyn-eta "$DYN_ETA" \
    --padding-mode "$PADDING" --prediction-type "$PREDICTION" --steps "$STEPS" --batch 16 --lr 1e-3 --warmup-steps 100 --cosine \
    --val-data "$OUT/val.npy" \
    --seed 0 --log-every 50 --checkpoint-every 500 $resume
  touch "$model/train.done"
fi

# the sampler's defaults, on the validation sequences only: every DDIM steps × ddim_eta pair, for
# this model and (BEFORE=DIR) another model folder beside it, e.g. the previous built-in model
# (`mkdir -p /tmp/before && git archive 35d22e0 assets/default | tar -x -C /tmp/before`, then
# BEFORE=/tmp/before/assets/default); the table and figure: experiments/defaults_table.py OUT
sweep() {
  local m=$1 tag=$2 k e f
  for k in $SWEEP_STEPS; do
    for e in $SWEEP_ETAS; do
      f="$OUT/val_${tag}_k${k}_e${e}.npy"
      [ -f "$f" ] || $BIN sample --model "$m" --input "$OUT/val.npy" --out "$f" --members 8 \
        --steps "$k" --ddim-eta "$e" --seed 0 --batch 16
      [ -f "${f%.npy}.eval.json" ] || $BIN eval --forecast "$f" --truth "$OUT/val.npy" --json "${f%.npy}.eval.json" > /dev/null
    done
  done
}
sweep "$model" after
if [ -n "${BEFORE:-}" ]; then
  sweep "$BEFORE" before
fi
# the test sequences of the reproduction (seed 2), scored once at the chosen defaults
# (20 DDIM steps, ddim_eta 1) and, for the model before, also at its old defaults (50, 0)
[ -f "$OUT/test.npy" ] || $BIN data navier-stokes --out "$OUT/test.npy" --samples 64 --frames 10 --resolution 32 --seed 2
test_run() {
  local m=$1 tag=$2 k=$3 e=$4 f="$OUT/test_${2}_k${3}_e${4}.npy"
  [ -f "$f" ] || $BIN sample --model "$m" --input "$OUT/test.npy" --out "$f" --members 8 \
    --steps "$k" --ddim-eta "$e" --seed 0 --batch 16
  [ -f "${f%.npy}.eval.json" ] || $BIN eval --forecast "$f" --truth "$OUT/test.npy" --json "${f%.npy}.eval.json" > /dev/null
}
test_run "$model" after 20 1
if [ -n "${BEFORE:-}" ]; then
  test_run "$BEFORE" before 20 1
  test_run "$BEFORE" before 50 0
fi
echo "wrote $model, the validation runs and the test runs in $OUT"
