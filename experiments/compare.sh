#!/usr/bin/env bash
# DYffusion against Dynamical Diffusion and the standard diffusion model, end to end, on two
# datasets: the generated 2-D turbulence of experiments/reproduce.sh (4 history frames, horizon 6,
# scored over a 12-frame roll-out) and the spring mesh (dydiff data spring-mesh; 2 history frames,
# horizon 6, scored over a 12-frame roll-out). Every model gets the same network per dataset and
# about the same training compute: a DyDiff or standard step is one forward and backward pass of
# one network; a DYffusion interpolator step the same; a forecaster step about 3.3 of them (an
# interpolator forward, two forecaster forward/backward passes and an interpolator forward/backward
# pass for the look-ahead loss). So DYffusion trains its interpolator for 3/8 and its forecaster
# for 3/16 of the others' STEPS (4000 → 1500 + 750). Each model forecasts MEMBERS (20, as
# DYffusion's reference configurations use 20-50) members of every held-out sequence (DDIM: 50
# steps; DYffusion: cold sampling, 20 network calls per window), and is scored by dydiff eval (fair
# and standard CRPS); the sampling time per forecast is taken from dydiff sample's summary line of a
# separate run of the first seed's models, one after another, at the end.
#
# DYffusion's settings follow its reference configurations where they differ from dydiff's
# defaults: no forecaster condition on the turbulence (--forecaster-condition none), interpolator
# dropout 0.05 on the spring mesh. The DDIM models of the spring mesh predict v
# (--prediction-type v_prediction): with noise prediction they diverge under DDIM on this data
# (docs/comparison.md, "Spring mesh"), and v-prediction's error does not grow as 1/√ᾱ at the
# noisiest timesteps (the built-in model's reason, experiments/builtin.sh).
#
#   experiments/compare.sh                      # everything, into experiments/out_compare
#   STUDY=experiments/out experiments/compare.sh
#                                               # reuse reproduce.sh's turbulence data and its
#                                               # paper-process DyDiff/standard models
#
# Settings (environment): OUT, DATASETS (ns and/or mesh), STUDY (a reproduce.sh output folder to
# reuse), SEEDS, STEPS (turbulence), MESH_STEPS, MEMBERS, BATCH, LR, BIN (a dydiff binary; default
# a copy of a fresh release build kept in OUT, so that an interrupted study resumes with the same
# binary). Finished runs are kept; an interrupted training run resumes.
# Tables: python3 experiments/compare_table.py OUT BIN (the runs' summaries and paired comparisons are kept
# in experiments/results/compare/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/out_compare}
STUDY=${STUDY:-}
DATASETS=${DATASETS:-"ns mesh"}
SEEDS=${SEEDS:-"0 1"}
STEPS=${STEPS:-4000}
MESH_STEPS=${MESH_STEPS:-3000}
MEMBERS=${MEMBERS:-20}
BATCH=${BATCH:-16}
LR=${LR:-1e-3}
mkdir -p "$OUT/ns" "$OUT/mesh"
# shellcheck source=frozen_bin.sh
source experiments/frozen_bin.sh

# ---- data -------------------------------------------------------------------------------------
# Turbulence: reproduce.sh's training sequences (768 × 16 frames at 32²) and 64 held-out sequences
# of 4 + 12 frames (the same flows as reproduce.sh's test set, run 6 frames further).
if [[ " $DATASETS " == *" ns "* ]]; then
  if [ -n "$STUDY" ] && [ -f "$STUDY/train.npy" ]; then
    [ -f "$OUT/ns/train.npy" ] || ln -s "$(realpath "$STUDY/train.npy")" "$OUT/ns/train.npy"
  else
    [ -f "$OUT/ns/train.npy" ] || $BIN data navier-stokes --out "$OUT/ns/train.npy" --samples 768 --frames 16 --resolution 32 --seed 1
  fi
  [ -f "$OUT/ns/test.npy" ] || $BIN data navier-stokes --out "$OUT/ns/test.npy" --samples 64 --frames 16 --resolution 32 --seed 2
fi
# Spring mesh: a snapshot every 10 of the benchmark's Δt (the same Δτ: 1280 substeps), 81 frames
# per training trajectory (64 of them), 2 + 12 frames from the start of 32 held-out trajectories.
if [[ " $DATASETS " == *" mesh "* ]]; then
  MESH_DT=$(python3 -c 'import math; print(10 * 2 * math.pi / 804)')
  [ -f "$OUT/mesh/train.npy" ] || $BIN data spring-mesh --out "$OUT/mesh/train.npy" --samples 64 --frames 81 --dt "$MESH_DT" --substeps 1280 --seed 1
  [ -f "$OUT/mesh/test.npy" ] || $BIN data spring-mesh --out "$OUT/mesh/test.npy" --samples 32 --frames 14 --dt "$MESH_DT" --substeps 1280 --seed 2
fi
# The spring mesh's 10×10 frames need a two-level network (10 = 2 × 5).
cat > "$OUT/mesh/unet.json" <<'JSON'
{"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
 "attention_head_dim": 32, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
 "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
JSON

# ---- one run ----------------------------------------------------------------------------------
# run DATASET METHOD SEED: train (unless done), forecast the test set's 12-frame roll-out, score.
run() {
  local ds=$1 method=$2 seed=$3 dir hist steps net=() train_flags=() sample_flags=() resume=""
  dir="$OUT/$ds/${method}_seed${seed}"
  case $ds in
    ns) hist=4; steps=$STEPS ;;
    mesh) hist=2; steps=$MESH_STEPS; net=(--unet-config "$OUT/mesh/unet.json") ;;
  esac
  case $method in
    dydiff) train_flags=(--dyn-eta 0.5 --steps "$steps"); sample_flags=(--steps 50 --ddim-eta 0) ;;
    standard) train_flags=(--dyn-eta 0 --steps "$steps"); sample_flags=(--steps 50 --ddim-eta 0) ;;
    dyffusion) train_flags=(--method dyffusion --interpolator-steps $((steps * 3 / 8)) --steps $((steps * 3 / 16))) ;;
  esac
  # the reference configurations' DYffusion settings, and v-prediction for the mesh's DDIM models
  case $ds:$method in
    ns:dyffusion) train_flags+=(--forecaster-condition none) ;;
    mesh:dyffusion) train_flags+=(--interpolator-dropout 0.05) ;;
    mesh:*) train_flags+=(--prediction-type v_prediction) ;;
  esac
  # reuse reproduce.sh's paper-process models for the turbulence (same data, network and budget)
  if [ "$ds" = ns ] && [ "$method" != dyffusion ] && [ -n "$STUDY" ]; then
    local eta=0.5
    [ "$method" = standard ] && eta=0
    if [ -f "$STUDY/paper_eta${eta}_seed${seed}/unet/config.json" ] && [ ! -e "$dir" ]; then
      ln -s "$(realpath "$STUDY/paper_eta${eta}_seed${seed}")" "$dir"
    fi
  fi
  if [ ! -L "$dir" ] && [ ! -f "$dir/.trained" ]; then
    ls "$dir"/train_state*.safetensors > /dev/null 2>&1 && resume="--resume"
    local start
    start=$(date +%s)
    $BIN train --data "$OUT/$ds/train.npy" --out "$dir" --history $hist --future 6 \
      "${train_flags[@]}" "${net[@]}" --batch "$BATCH" --lr "$LR" --warmup-steps 100 \
      --cosine --seed "$seed" --log-every 50 --checkpoint-every 500 $resume
    # wall seconds of this invocation (a resumed run adds to the earlier ones)
    echo $(( $(date +%s) - start + $(cat "$dir.train_seconds" 2>/dev/null || echo 0) )) > "$dir.train_seconds"
    touch "$dir/.trained"
  fi
  if [ ! -f "$OUT/$ds/${method}_seed${seed}.eval.json" ]; then
    $BIN sample --model "$dir" --input "$OUT/$ds/test.npy" --out "$OUT/$ds/${method}_seed${seed}.forecast.npy" \
      --members "$MEMBERS" --lead 12 --seed "$seed" --batch 16 "${sample_flags[@]}" 2> "$OUT/$ds/${method}_seed${seed}.sample.txt"
    $BIN eval --forecast "$OUT/$ds/${method}_seed${seed}.forecast.npy" --truth "$OUT/$ds/test.npy" \
      --json "$OUT/$ds/${method}_seed${seed}.eval.json" > /dev/null
  fi
}

for ds in $DATASETS; do
  for seed in $SEEDS; do
    for method in dyffusion dydiff standard; do
      run "$ds" "$method" "$seed"
    done
  done
done
# Sampling time on an otherwise idle machine: the first seed's models again, one after another,
# after everything else (the runs above may overlap other work).
for ds in $DATASETS; do
  seed=${SEEDS%% *}
  for method in dyffusion dydiff standard; do
    timing="$OUT/$ds/${method}_seed${seed}.timing.txt"
    [ -f "$timing" ] && continue
    flags=()
    [ "$method" != dyffusion ] && flags=(--steps 50)
    $BIN sample --model "$OUT/$ds/${method}_seed${seed}" --input "$OUT/$ds/test.npy" --out "$OUT/$ds/timing.npy" \
      --members "$MEMBERS" --lead 12 --seed "$seed" --batch 16 "${flags[@]}" 2> "$timing"
    rm -f "$OUT/$ds/timing.npy"
  done
done
python3 experiments/compare_table.py "$OUT" "$BIN" > "$OUT/table.md"
cat "$OUT/table.md"
