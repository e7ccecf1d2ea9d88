#!/usr/bin/env bash
# DyDiff (dyn_eta 0.5) against the standard diffusion model (dyn_eta 0) on generated 2-D turbulence,
# end to end: data, training (same network, budget and seeds for both), 8-member forecasts with
# 50 DDIM steps on held-out sequences, scores, and the table of README.md (mean ± std over seeds).
#
#   experiments/reproduce.sh                 # the README's main table (about 80 minutes on 2 cores)
#   STEPS=1500 TRAIN_SEQ=192 TEST_SEQ=16 OUT=experiments/out_short experiments/reproduce.sh
#                                            # the README's shorter budget (about 30 minutes)
#   STEPS=20000 SEEDS="0 1 2" experiments/reproduce.sh
#
# Settings (environment): OUT, STEPS, BATCH, LR, SEEDS, RES, TRAIN_SEQ, TEST_SEQ, and BIN (a
# dydiff binary to use instead of building one, e.g. a copy that later rebuilds cannot change).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
SEEDS=${SEEDS:-"0 1"}
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

for seed in $SEEDS; do
  for eta in 0.5 0; do
    run="$OUT/eta${eta}_seed${seed}"
    if [ ! -f "$run/eval.json" ]; then
      resume=""
      [ -f "$run/train_state.safetensors" ] && resume="--resume"
      $BIN train --data "$OUT/train.npy" --out "$run" --history $HISTORY --future $FUTURE \
        --dyn-eta "$eta" --steps "$STEPS" --batch "$BATCH" --lr "$LR" --warmup-steps 100 --cosine \
        --seed "$seed" --log-every 50 --checkpoint-every 500 $resume
      $BIN sample --model "$run" --input "$OUT/test.npy" --out "$run/forecast.npy" \
        --members 8 --steps 50 --seed "$seed" --batch 16
      $BIN eval --forecast "$run/forecast.npy" --truth "$OUT/test.npy" --json "$run/eval.json" > "$run/eval.txt"
    fi
  done
done

python3 experiments/table.py "$OUT" $SEEDS | tee "$OUT/table.md"
