"""What every objective shares: the flow path and the source distribution.

Conventions (SPEC §1): t = 0 is noise and t = 1 is data,

    x_t = (1 - (1 - 1e-5) t) x0 + t x1,    v = x1 - (1 - 1e-5) x0,

with x0 drawn from the source distribution (`sample_source`, a standard normal today) and x1 a
data sample.
"""

import math
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.config_value import config_value  # noqa: F401  (objectives read it here)

Array = Any

# The 1e-5 keeps the path from collapsing exactly onto the data at t = 1 (as the original does).
SIGMA_MIN = 1e-5


def finest_level(denoise_timesteps: int) -> int:
  """L = log2(M); raises ValueError unless M is a positive power of two."""
  m = int(denoise_timesteps)
  if m < 1 or m & (m - 1):
    raise ValueError(f"denoise_timesteps must be a power of two, got {denoise_timesteps!r}")
  return int(round(math.log2(m)))


SOURCES = ("gaussian", "zeros")


def sample_source(rng: Array, shape: Tuple[int, ...], source: str = "gaussian") -> Array:
  """Draws x0 from the source distribution: `'gaussian'` (standard normal, the default) or
  `'zeros'` (a fixed all-zero start: a deterministic one-pass regressor, see `regression`).

  Every objective and generation draw their source through this one function.
  """
  if source == "gaussian":
    return jax.random.normal(rng, shape)
  if source == "zeros":
    return jnp.zeros(shape, jnp.float32)
  raise ValueError(f"unknown source {source!r}; known: {SOURCES}")


def interpolate(x0: Array, x1: Array, t: Array) -> Array:
  """x_t = (1 - (1 - 1e-5) t) x0 + t x1, with t [B] broadcast over the image axes."""
  t_full = t.reshape((-1,) + (1,) * (x1.ndim - 1))
  # Same operation order as the original, so that faithful mode matches it bit for bit.
  return (1 - (1 - SIGMA_MIN) * t_full) * x0 + t_full * x1


def flow_velocity(x0: Array, x1: Array) -> Array:
  """The conditional velocity d x_t / dt = x1 - (1 - 1e-5) x0."""
  return x1 - (1 - SIGMA_MIN) * x0


def permute_batch(batch: Mapping[str, Array], rng: Array) -> dict:
  """The batch with its rows shuffled by one random permutation (the original's `perm_key`)."""
  n = batch["image"].shape[0]
  perm = jax.random.permutation(rng, n)
  return {k: v[perm] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == n else v
          for k, v in batch.items()}
