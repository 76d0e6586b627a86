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
