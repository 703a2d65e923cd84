#!/usr/bin/env bash
# Train the paper's Table 3 variants on one budget (configs/ablation_acdc.json), JOBS at a time (default 2),
# then evaluate them on the ACDC validation volumes at Cartesian 4x and 8x. Writes runs/ablation/{full,no_*}/ and
# runs/ablation/eval_R{4,8}/{results.md,results.json,examples_*.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vldun
CFG=configs/ablation_acdc.json
JOBS=${JOBS:-2}
mkdir -p runs/ablation
train() { "$V" train "$CFG" --out "runs/ablation/$1" --set "{\"overwrite\": true, \"model_overrides\": $2}" \
            > "runs/ablation/$1.log" 2>&1 || { echo "training $1 failed: runs/ablation/$1.log" >&2; return 1; }; }
names=(full no_seg_head no_rec_head no_priors no_fd)
# The recorded ablations (BENCHMARKS.md) used the tiny prior tower of their time: a ViT on the resized image.
OLD_CLIP="\"clip\": $(cat configs/tiny_vit_clip.json)"  # the tiny prior tower before 2026-11-27
overrides=("{$OLD_CLIP}" "{$OLD_CLIP, \"seg_head\": false}" "{$OLD_CLIP, \"rec_head\": false}"
           '{"use_priors": false}' "{$OLD_CLIP, \"freq_decoupling\": false}")
for i in "${!names[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  train "${names[$i]}" "${overrides[$i]}" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n; done
for R in 4 8; do  # one evaluation per acceleration, in parallel
  "$V" evaluate --dataset acdc --accel "$R" --weights runs/ablation/full/best --variants runs/ablation \
    --label-set acdc --max-slices "${MAX_SLICES:-40}" --out "runs/ablation/eval_R$R" --overwrite --threads 1 &
done
wait
