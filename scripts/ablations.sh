#!/usr/bin/env bash
# Train the paper's Table 3 variants on one budget (configs/ablation_acdc.json), two at a time, then evaluate
# them on the ACDC validation volumes at Cartesian 4x and 8x. Writes runs/ablation/{full,no_*}/ and
# runs/ablation/eval/{results.md,results.json,examples_*.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vldun
CFG=configs/ablation_acdc.json
train() { "$V" train "$CFG" --out "runs/ablation/$1" --set "{\"overwrite\": true, \"model_overrides\": $2}" > "runs/ablation/$1.log" 2>&1; }
mkdir -p runs/ablation
train full '{}' & train no_seg_head '{"seg_head": false}' & wait
train no_rec_head '{"rec_head": false}' & train no_priors '{"use_priors": false}' & wait
train no_fd '{"freq_decoupling": false}'
"$V" evaluate --dataset acdc --accel 4 8 --weights runs/ablation/full/best --variants runs/ablation \
  --label-set acdc --max-slices "${MAX_SLICES:-40}" --out runs/ablation/eval --overwrite --threads 1
