"""Test settings: CPU only, float32 matmuls, fixtures' location."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

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
