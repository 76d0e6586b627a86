#!/usr/bin/env bash
# Sets up .venv (once) and runs the test suite: `bash scripts/test.sh [--jobs=N] [pytest args]`
# (pytest processes side by side: scripts/run_tests.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
python scripts/run_tests.py "$@"
