#!/usr/bin/env bash
# The learning issue's rows for one checkpoint, on all validation slices, 1 thread per evaluation, JOBS at a time
# (default 2): ACDC 4x with k-space and magnitude only, ACDC 8x with k-space, COVID radial 4x with k-space and
# magnitude only, BraTS 4x with k-space. Writes OUT/NAME.json (an existing one is kept: re-run to fill in the
# rest); summarise with `python scripts/summarize_eval.py OUT [OUT2 ...]`. TV is skipped (slow; its figures are
# in BENCHMARKS.md). Usage: scripts/evaluate_checkpoint.sh WEIGHTS OUT [extra vldun evaluate args]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 WEIGHTS OUT [extra vldun evaluate args]" >&2; exit 2; }
W=$1; OUT=$2; shift 2
JOBS=${JOBS:-2}
mkdir -p "$OUT"
rows=("acdc_k4|--dataset acdc --accel 4" "acdc_m4|--dataset acdc --accel 4 --no-dc"
      "acdc_k8|--dataset acdc --accel 8" "covid_k4|--dataset covid_ct --accel 4"
      "covid_m4|--dataset covid_ct --accel 4 --no-dc" "brats_k4|--dataset brats2015 --accel 4")
for row in "${rows[@]}"; do
  name=${row%%|*}; args=${row#*|}
  [ -s "$OUT/$name.json" ] && continue
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  # shellcheck disable=SC2086
  .venv/bin/vldun evaluate $args --weights "$W" --no-tv --threads 1 --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1 || echo "evaluation $name failed: $OUT/$name.log" >&2 &
done
wait
