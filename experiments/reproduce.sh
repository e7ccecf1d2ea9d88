#!/usr/bin/env bash
# DyDiff (dyn_eta 0.5) against the standard diffusion model (dyn_eta 0) on generated 2-D turbulence,
# end to end: data, training (same network, budget and seeds for every model), 8-member forecasts
# with 50 DDIM steps on held-out sequences, scores, and the tables of README.md (mean ± std over
# seeds; CRPS per lead). Each model is trained with the paper's process (docs/process.md,
# "Forward process": only the future diffused) and, with PROCESSES="paper reference", also with
# the reference implementation's (docs/process.md, "Diffusing the history": train
# --diffuse-history).
#
#   experiments/reproduce.sh                 # the paper's process (about 80 minutes on 2 cores)
#   PROCESSES="paper reference" experiments/reproduce.sh
#                                            # the 2×2 comparison of both processes (about 3 hours)
#   PROCESSES=paper ETAS="0 0.1 0.5 0.9 1" SEEDS=0 OUT=experiments/out_eta experiments/reproduce.sh
#                                            # sensitivity to dyn_eta (the paper's Figure 7c)
#   STEPS=1500 TRAIN_SEQ=192 TEST_SEQ=16 OUT=experiments/out_short experiments/reproduce.sh
#                                            # the README's shorter budget (about 30 minutes)
#   STEPS=20000 SEEDS="0 1 2" experiments/reproduce.sh
#
# Settings (environment): OUT, STEPS, BATCH, LR, SEEDS, ETAS, PROCESSES (paper, reference), RES,
# TRAIN_SEQ, TEST_SEQ, and BIN (a dydiff binary to use instead of building one, e.g. a copy that
# later rebuilds cannot change). Finished runs are kept; an interrupted one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
SEEDS=${SEEDS:-"0 1"}
ETAS=${ETAS:-"0.5 0"}
PROCESSES=${PROCESSES:-paper}
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
  for process in $PROCESSES; do
    case $process in
      paper) flag="" ;;
      reference) flag="--diffuse-history" ;;
      *) echo "PROCESSES: expected paper and/or reference, found $process" >&2; exit 2 ;;
    esac
    for eta in $ETAS; do
      run="$OUT/${process}_eta${eta}_seed${seed}"
      if [ ! -f "$run/eval.json" ]; then
        resume=""
        [ -f "$run/train_state.safetensors" ] && resume="--resume"
        $BIN train --data "$OUT/train.npy" --out "$run" --history $HISTORY --future $FUTURE \
          --dyn-eta "$eta" $flag --steps "$STEPS" --batch "$BATCH" --lr "$LR" --warmup-steps 100 \
          --cosine --seed "$seed" --log-every 50 --checkpoint-every 500 $resume
        $BIN sample --model "$run" --input "$OUT/test.npy" --out "$run/forecast.npy" \
          --members 8 --steps 50 --seed "$seed" --batch 16
        $BIN eval --forecast "$run/forecast.npy" --truth "$OUT/test.npy" --json "$run/eval.json" > "$run/eval.txt"
      fi
      # the diagnostic: noise-prediction error on the held-out windows at fixed timesteps
      [ -f "$run/noise.json" ] || $BIN bench noise --model "$run" --data "$OUT/test.npy" --seed "$seed" > "$run/noise.json"
    done
  done
done

python3 experiments/table.py "$OUT" | tee "$OUT/table.md"
