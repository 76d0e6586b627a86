#!/usr/bin/env bash
# Sets up .venv, trains the default digits shortcut model, then writes samples and metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
WORKDIR=${WORKDIR:-workdirs/digits_shortcut}
python train.py --config=configs/digits_shortcut.py --workdir="$WORKDIR" "$@"
python eval.py --workdir="$WORKDIR" --mode=sample --steps=1,4,128 --num_samples=100 --cfg_scale=1.5
python eval.py --workdir="$WORKDIR" --mode=digits_metrics --steps=1,2,4,8,128 --num_samples=1000 --cfg_scale=1.5
echo "Sample grids: $WORKDIR/samples/   metrics: $WORKDIR/digits_metrics.json"
