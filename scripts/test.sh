#!/usr/bin/env bash
# Sets up .venv (once) and runs the test suite: `bash scripts/test.sh [pytest args]`.
# The test files are spread over pytest-xdist workers (`-n`, default: the CPU count + 1, at most 4;
# SHORTCUT_JAX_TEST_JOBS overrides it), each file whole in one worker (`--dist loadfile`) so
# that its module fixtures and compiled functions are made once, in the order tests/conftest.py
# gives (the files that start processes first); all workers share one XLA compilation cache.
# `bash scripts/test.sh --reference` instead sets up .venv-reference (torch, torchvision,
# pytorch-fid, diffusers, transformers: scripts/setup_reference.sh) and runs the comparisons
# against those reference implementations (tests marked `reference`); there none may skip for
# want of those packages.
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
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d -t shortcut_jax_test_xla_cache_XXXXXX)
  export JAX_COMPILATION_CACHE_DIR
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
# One worker more than the cores (at most 4): a worker often waits on the processes its test
# started, and a third keeps both cores busy then (docs/benchmarks.md: 16.1 -> 14.0 min here).
jobs=${SHORTCUT_JAX_TEST_JOBS:-$(python -c "import os; print(min(4, len(os.sched_getaffinity(0)) + 1))")}
# One worker per core already keeps the cores busy: XLA's multi-threaded CPU ops would only add
# thread hand-offs. XLA's older CPU fusion emitters compile the tests' tiny programs in about
# two thirds of the time (docs/benchmarks.md) and run them as fast. Unless XLA_FLAGS says
# otherwise; the programs tests start inherit them.
for flag in --xla_cpu_multi_thread_eigen=false --xla_cpu_use_fusion_emitters=false; do
  case " ${XLA_FLAGS:-} " in
    *"${flag%=*}"*) ;;
    *) export XLA_FLAGS="${XLA_FLAGS:-} $flag" ;;
  esac
done
# The import contract (pyproject.toml [tool.importlinter], docs/architecture.md): a module that
# imports from a layer above its own, or a circle, fails the run before any test.
lint-imports --no-cache >/dev/null || { lint-imports --no-cache; exit 1; }
# Test files or folders named on the command line run instead of the whole of tests/.
targets=(tests)
for arg in "$@"; do
  case "$arg" in tests/*|./tests/*) targets=() ;; esac
done
python -m pytest -q -p no:cacheprovider -n "$jobs" --dist loadfile --no-loadscope-reorder "$@" "${targets[@]}"
