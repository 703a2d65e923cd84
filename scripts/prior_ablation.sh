#!/usr/bin/env bash
# Prior phase only (configs/shipped.json's 20 x 100 steps, no joint phase) for the prior tower / sampling
# choices, each then measured on whole validation slices with benchmarks/priors.py. Writes runs/prior_ablation/.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_CLIP="\"clip\": $(cat configs/tiny_vit_clip.json)"  # the tiny prior tower before 2026-11-27
names=(vit_resize_unbalanced vit_resize_balanced resnet_tiles_unbalanced resnet_tiles_balanced)
sets=("{$OLD_CLIP}" "{$OLD_CLIP}" '{}' '{}')
balance=(null '"modality"' null '"modality"')
only=${ONLY:-}  # e.g. ONLY=resnet_tiles_balanced runs that variant alone
mkdir -p runs/prior_ablation
for i in "${!names[@]}"; do
  n=${names[$i]}
  [ -n "$only" ] && [ "$only" != "$n" ] && continue
  .venv/bin/vldun train configs/shipped.json --out "runs/prior_ablation/$n" > "runs/prior_ablation/$n.log" 2>&1 \
    --set "{\"overwrite\": true, \"epochs\": 0, \"prior_balance\": ${balance[$i]}, \"model_overrides\": ${sets[$i]}}"
  .venv/bin/python benchmarks/priors.py --weights "runs/prior_ablation/$n/last" --json "runs/prior_ablation/$n.json" \
    | tee "runs/prior_ablation/$n.txt"
done
