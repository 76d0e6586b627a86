#!/usr/bin/env bash
# Sets up .venv (once) and runs the test suite: `bash scripts/test.sh [--jobs=N] [pytest args]`
# (pytest processes side by side: scripts/run_tests.py).
# `bash scripts/test.sh --reference` instead sets up .venv-reference (torch, torchvision,
# pytorch-fid, diffusers, transformers: scripts/setup_reference.sh) and runs the comparisons
# against those reference implementations (tests marked `reference`); there none may skip.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
if [ "${1:-}" = "--reference" ]; then
  shift
  source scripts/setup_reference.sh
  export SHORTCUT_JAX_REFERENCE=required
  exec .venv-reference/bin/python -m pytest -q -p no:cacheprovider -m reference "$@" tests
fi
python scripts/run_tests.py "$@"
