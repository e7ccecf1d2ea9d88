#!/usr/bin/env bash
# The built-in model's dyn_eta chosen on validation data, never the test set (docs/reproduction.md,
# "Selection on validation"): the built-in recipe (experiments/builtin.sh: the paper's process,
# circular padding, v-prediction, 4 000 steps, batch 16, lr 1e-3, 100 warm-up steps, cosine decay,
# seed 0) trained at each dyn_eta of ETAS, each forecast (8 members, the sampler's defaults: 20
# DDIM steps, ddim_eta 1) of VAL_SEQ validation sequences (generator seed 3; the test sequences
# are seed 2 and are not read here) scored by `dydiff eval`, each against the best with a paired
# bootstrap (`eval --compare`). The rule, fixed before the runs: the lowest validation fair CRPS
# is chosen; a value within the bootstrap interval of the best is reported as indistinguishable.
#
#   experiments/select_eta.sh          # into experiments/out_select (about 1.5 hours on 2 cores)
#
# Settings (environment): OUT, ETAS, STEPS, VAL_SEQ, BIN (a dydiff binary; default a copy of a
# fresh release build kept in OUT). Finished runs are kept; an interrupted one resumes. The scores,
# the comparisons and the table are kept in experiments/results/select_eta/ (small, committed: an
# output folder does not outlive its machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out_select}
ETAS=${ETAS:-"0 0.1 0.5 0.9"}
STEPS=${STEPS:-4000}
VAL_SEQ=${VAL_SEQ:-64}
mkdir -p "$OUT"
# shellcheck source=frozen_bin.sh
source experiments/frozen_bin.sh

[ -f "$OUT/train.npy" ] || $BIN data navier-stokes --out "$OUT/train.npy" --samples 768 --frames 16 --resolution 32 --seed 1
[ -f "$OUT/val.npy" ] || $BIN data navier-stokes --out "$OUT/val.npy" --samples "$VAL_SEQ" --frames 10 --resolution 32 --seed 3

for eta in $ETAS; do
  run="$OUT/eta$eta"
  if [ ! -f "$run/train.done" ]; then
    resume=""
    [ -f "$run/train_state.safetensors" ] && resume="--resume"
    $BIN train --data "$OUT/train.npy" --out "$run" --history 4 --future 6 --dyn-eta "$eta" \
      --padding-mode circular --prediction-type v_prediction --steps "$STEPS" --batch 16 --lr 1e-3 \
      --warmup-steps 100 --cosine --seed 0 --log-every 50 --checkpoint-every 500 $resume
    touch "$run/train.done"
  fi
  [ -f "$run/val_forecast.npy" ] || $BIN sample --model "$run" --input "$OUT/val.npy" \
    --out "$run/val_forecast.npy" --members 8 --seed 0 --batch 16
  [ -f "$run/val_eval.json" ] || $BIN eval --forecast "$run/val_forecast.npy" --truth "$OUT/val.npy" \
    --json "$run/val_eval.json" > /dev/null
done

# the rule: the lowest validation CRPS; every other value against it with a paired bootstrap
best=$(for eta in $ETAS; do
  printf '%s %s\n' "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["overall"]["crps"])' "$OUT/eta$eta/val_eval.json")" "$eta"
done | sort -g | head -1 | cut -d' ' -f2)
KEPT=experiments/results/select_eta
mkdir -p "$KEPT"
{
echo "| dyn_eta | validation CRPS | change against dyn_eta $best | 95% interval |"
echo "|---|---|---|---|"
for eta in $ETAS; do
  $BIN eval --forecast "$OUT/eta$eta/val_forecast.npy" --truth "$OUT/val.npy" \
    --compare "$OUT/eta$best/val_forecast.npy" --json "$OUT/eta$eta/val_compare.json" > /dev/null
  python3 - "$OUT/eta$eta/val_compare.json" "$eta" "$best" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["compare"]["scores"]["crps"]
lo, hi = c["ci95"]
if sys.argv[2] == sys.argv[3]:
    print(f"| {sys.argv[2]} | {c['this']:.4f} | — | — |")
else:
    print(f"| {sys.argv[2]} | {c['this']:.4f} | {100 * c['change']:+.1f}% | [{100 * lo:+.1f}%, {100 * hi:+.1f}%] |")
PY
  mkdir -p "$KEPT/eta$eta"
  cp "$OUT/eta$eta/val_eval.json" "$OUT/eta$eta/val_compare.json" "$KEPT/eta$eta/"
done
echo "chosen on validation: dyn_eta $best (to install: DYN_ETA=$best experiments/builtin.sh)"
} | tee "$KEPT/table.md"
