"""What every objective shares besides the path: the source distribution, the level grid and
the batch shuffle.

Conventions (SPEC §1): t = 0 is noise and t = 1 is data, x0 is drawn from the source distribution
(`sample_source`, a standard normal today) and x1 is a data sample. The interpolation paths live in
`paths` (the original's linear path `interpolate` / `flow_velocity` is re-exported here for the
callers that import it from this module).
"""

import math
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.config_value import config_value  # noqa: F401  (objectives read it here)
from shortcut_jax.objectives.paths import (SIGMA_MIN, flow_velocity,  # noqa: F401  (re-exported)
                                           interpolate)

Array = Any


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


def permute_batch(batch: Mapping[str, Array], rng: Array) -> dict:
  """The batch with its rows shuffled by one random permutation (the original's `perm_key`)."""
  n = batch["image"].shape[0]
  perm = jax.random.permutation(rng, n)
  return {k: v[perm] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == n else v
          for k, v in batch.items()}
