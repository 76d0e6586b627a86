"""Which level each self-consistency row of a shortcut-style batch trains: the original's
assignment (`faithful_levels`, level L-1 first, bit for bit) and this library's default (every
level, balanced by a weighting over the levels: `level_weights`, `balanced_level_counts`,
`default_levels`)."""

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


def faithful_levels(bootstrap_size: int, finest: int, dt_bias: int) -> Tuple[np.ndarray, int]:
  """The original's bootstrap level assignment.

  Args:
    bootstrap_size: B_b, samples in the bootstrap part.
    finest: L = log2(denoise_timesteps).
    dt_bias: `bootstrap_dt_bias` (0 or 1).

  Returns:
    (levels int32 [B_b], number of leading samples that get CFG'd teacher velocities).
  """
  n, big_l = bootstrap_size, finest
  if dt_bias == 0:
    per_level = n // big_l
    levels = np.repeat(big_l - 1 - np.arange(big_l), per_level)
    num_cfg = per_level
  else:
    per_level = (n // 2) // big_l
    levels = np.repeat(big_l - 1 - np.arange(max(big_l - 2, 0)), per_level)
    levels = np.concatenate([levels, np.ones(n // 4, np.int64), np.zeros(n // 4, np.int64)])
    num_cfg = per_level
  levels = np.concatenate([levels, np.zeros(n - levels.shape[0], np.int64)])
  return levels[:n].astype(np.int32), int(num_cfg)


def level_weights(finest: int, dt_bias: int) -> np.ndarray:
  """Target share of each bootstrap level 0 .. L-1 in the default mode."""
  if finest < 1:
    raise ValueError("the shortcut objective needs denoise_timesteps >= 2 (at least one "
                     "bootstrap level below the finest)")
  if dt_bias == 0 or finest == 1:
    return np.full(finest, 1.0 / finest)
  if finest == 2:
    return np.array([0.5, 0.5])
  rest = np.full(finest - 2, 0.5 / (finest - 2))
  return np.concatenate([[0.25, 0.25], rest])


def balanced_level_counts(n: int, weights: np.ndarray) -> np.ndarray:
  """Integer counts per level summing to n, each >= 1 (needs n >= len(weights)), closest to n·w.

  Largest-remainder rounding after giving every level one sample; ties favour coarse levels
  (small index) when adding and fine levels lose first when removing.
  """
  num = len(weights)
  if n < num:
    raise ValueError(f"{n} samples cannot cover {num} levels")
  ideal = n * np.asarray(weights, np.float64)
  counts = np.maximum(np.floor(ideal), 1).astype(np.int64)
  while counts.sum() > n:
    excess = np.where(counts > 1, counts - ideal, -np.inf)
    counts[num - 1 - int(np.argmax(excess[::-1]))] -= 1
  while counts.sum() < n:
    counts[int(np.argmax(ideal - counts))] += 1
  return counts


def default_levels(b_boot: int, st, level_key) -> Tuple[Array, int, Any]:
  """Bootstrap levels of the default layout for the settings `st` (a `ShortcutSettings`):
  (levels int32 [B_b] finest first, num_cfg, cfg_mask)."""
  big_l = st.finest
  weights = level_weights(big_l, st.dt_bias)
  if b_boot == 0:
    return jnp.zeros((0,), jnp.int32), 0, None
  if b_boot >= big_l:
    counts = balanced_level_counts(b_boot, weights)
    levels_np = np.repeat(np.arange(big_l)[::-1], counts[::-1]).astype(np.int32)
    return jnp.asarray(levels_np), int(counts[big_l - 1]), None
  drawn = jax.random.choice(level_key, big_l, (b_boot,), replace=False, p=jnp.asarray(weights))
  boot_level = jnp.sort(drawn)[::-1].astype(jnp.int32)
  # Sorted finest first with distinct levels: level L-1, if drawn, is row 0.
  return boot_level, min(1, b_boot), boot_level[:1] == big_l - 1
