#!/usr/bin/env bash
# The GPU figures in one unattended command (about 10 minutes on one H100), for a lent device:
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        # default: $OUT if set, else gpu_suite_out/
#
# 1. train step of DiT-B/2 and DiT-XL/2 (32x32x4 latents, shortcut objective, bfloat16 compute):
#    median step time, images/s, XLA FLOPs and MFU against the device's dense bf16 peak, compiled
#    temporary memory and the allocator's peak, with XLA attention and with cuDNN's fused
#    attention (benchmarks/train_step.py, two runs);
# 2. FID-50k wall time: 50,000 images of the digits model sampled in one step, their Inception
#    features and the Frechet distance (benchmarks/fid.py).
# Each part has its own time limit, so a slow or failing part never stops the others; every
# part writes <name>.json (its figures) and <name>.log, and summary.txt lists the exit codes.
# Record the figures in docs/benchmarks.md ("GPU"). Tests never depend on this.
#
# Environment: SIZES (default B,XL), STEPS (timed steps, default 10), FID_SAMPLES (default
# 50000), FID_BATCH (default 500), PART_TIMEOUT (seconds per part, default 240).
# `SIZES=small STEPS=2 FID_SAMPLES=64 FID_BATCH=16` runs the whole suite on a CPU in a few
# minutes (a check of the script, not a measurement; the cuDNN part fails there).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_suite_out}}"
mkdir -p "$out"
sizes="${SIZES:-B,XL}"
steps="${STEPS:-10}"
fid_samples="${FID_SAMPLES:-50000}"
fid_batch="${FID_BATCH:-500}"
limit="${PART_TIMEOUT:-240}"
python="${PYTHON:-python}"
: > "$out/summary.txt"

part() {  # part NAME COMMAND...: runs it under the time limit, records its exit code and time.
  local name="$1"; shift
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.json" 2> "$out/$name.log"
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/summary.txt"
}

"$python" -c "import jax; print(jax.devices())" > "$out/devices.txt" 2>&1
for attention in xla cudnn; do
  part "train_step_$attention" "$python" benchmarks/train_step.py --sizes="$sizes" \
      --objectives=shortcut --dtypes=bfloat16 --attention_impl="$attention" --no_original \
      --steps="$steps" --warmup=2
done
part fid "$python" benchmarks/fid.py --num_samples="$fid_samples" --batch_size="$fid_batch" \
    --throughput_batches=5
echo "figures in $out/"
