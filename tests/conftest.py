"""Test settings: CPU only, float32 matmuls, fixtures' location."""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA cache for the whole run, inherited by the programs the tests start
# (train.py, eval.py, workers): many tests compile the same tiny train steps and samplers, and
# compiling dominates them on CPU. SHORTCUT_JAX_TEST_XLA_CACHE names a folder to keep between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = os.environ.get("SHORTCUT_JAX_TEST_XLA_CACHE")
  if not _cache:
    _cache = tempfile.mkdtemp(prefix="shortcut_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def original_fixture_dir():
  path = FIXTURES / "original_dit"
  if not path.exists():
    pytest.skip(f"fixture folder {path} not present (it ships in ../shared/fixtures)")
  return path


@pytest.fixture(scope="module")
def fast_compile():
  """Turns off most XLA optimisations for a module whose tiny tests are dominated by compiling;
  the optimisations do not change what such tests check."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
