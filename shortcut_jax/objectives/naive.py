"""Flow-matching ("naive") objective, and the interpolation helpers every objective shares.

Conventions (SPEC §1): t = 0 is noise and t = 1 is data,

    x_t = (1 - (1 - 1e-5) t) x0 + t x1,    v = x1 - (1 - 1e-5) x0,

with x0 drawn from the source distribution (`sample_source`, a standard normal today) and x1 a
data sample. The flow-matching objective regresses the network, called at the finest level
L = log2(denoise_timesteps), onto v at t uniform on {0, 1/M, ..., (M-1)/M}.
"""

import math
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.models.velocity_model import cond_from_batch
from shortcut_jax.objectives.base import TrainingTargets, register_objective

Array = Any

# The 1e-5 keeps the path from collapsing exactly onto the data at t = 1 (as the original does).
SIGMA_MIN = 1e-5


def config_value(config, name: str, default):
  """`config.<name>`, or `default` when the config (ConfigDict or any object) lacks the field."""
  if isinstance(config, Mapping):
    return config.get(name, default)
  try:
    return getattr(config, name)
  except (AttributeError, KeyError):
    return default


def finest_level(denoise_timesteps: int) -> int:
  """L = log2(M); raises ValueError unless M is a positive power of two."""
  m = int(denoise_timesteps)
  if m < 1 or m & (m - 1):
    raise ValueError(f"denoise_timesteps must be a power of two, got {denoise_timesteps!r}")
  return int(round(math.log2(m)))


def sample_source(rng: Array, shape: Tuple[int, ...]) -> Array:
  """Draws x0 from the source distribution (standard normal).

  Every objective draws its noise through this one function, so that a different source
  (e.g. a learned or non-Gaussian prior) only has to replace it.
  """
  return jax.random.normal(rng, shape)


def interpolate(x0: Array, x1: Array, t: Array) -> Array:
  """x_t = (1 - (1 - 1e-5) t) x0 + t x1, with t [B] broadcast over the image axes."""
  t_full = t.reshape((-1,) + (1,) * (x1.ndim - 1))
  # Same operation order as the original, so that faithful mode matches it bit for bit.
  return (1 - (1 - SIGMA_MIN) * t_full) * x0 + t_full * x1


def flow_velocity(x0: Array, x1: Array) -> Array:
  """The conditional velocity d x_t / dt = x1 - (1 - 1e-5) x0."""
  return x1 - (1 - SIGMA_MIN) * x0


def null_all_labels_if_unguided(model, cond: Mapping[str, Array], config) -> dict:
  """With `cfg_scale == 0` the model is trained unconditionally: every label becomes null.

  The original does this in its update function before making targets (CelebA-HQ setting); it is
  part of what the objective means, so the objectives do it themselves.
  """
  if float(config_value(config, "cfg_scale", 0.0)) == 0.0:
    return model.null_cond(cond)
  return dict(cond)


def permute_batch(batch: Mapping[str, Array], rng: Array) -> dict:
  """The batch with its rows shuffled by one random permutation (the original's `perm_key`)."""
  n = batch["image"].shape[0]
  perm = jax.random.permutation(rng, n)
  return {k: v[perm] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == n else v
          for k, v in batch.items()}


def label_drop_ratio(model, cond: Mapping[str, Array], drop: Array) -> Array:
  """Fraction of null labels the network sees (the original's `dropped_ratio`)."""
  if "label" in cond:
    return jnp.mean((cond["label"] == model.num_classes).astype(jnp.float32))
  return jnp.mean(drop.astype(jnp.float32))


@register_objective("naive", uses_level=False)
def naive_targets(model, params, ema_params, batch, rng, config) -> TrainingTargets:
  """Flow-matching targets for a whole batch.

  Args:
    model: the `VelocityModel` (only its label helpers are used; no network call).
    params: unused (the signature is shared by all objectives).
    ema_params: unused.
    batch: dict with `image` float32 NHWC and optional conditioning keys (`label`, ...).
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `class_dropout_prob`, `cfg_scale`, `faithful`.

  Returns:
    TrainingTargets with a single group `flow` covering the batch.
  """
  del params, ema_params
  m = int(config_value(config, "denoise_timesteps", 128))
  level_flow = finest_level(m)
  p_drop = float(config_value(config, "class_dropout_prob", 0.0))
  if config_value(config, "faithful", False):
    # The original shuffles every batch in its update step; a shuffled input pipeline makes this
    # redundant, so only faithful mode spends a key on it.
    perm_key, rng = jax.random.split(rng)
    batch = permute_batch(batch, perm_key)
  images = batch["image"]
  b = images.shape[0]
  cond = null_all_labels_if_unguided(model, cond_from_batch(batch), config)

  # The three draws use independent keys in the original too, so faithful and default agree here.
  label_key, time_key, noise_key = jax.random.split(rng, 3)
  drop = jax.random.bernoulli(label_key, p_drop, (b,))
  cond = model.drop_cond(cond, drop)
  t = jax.random.randint(time_key, (b,), 0, m).astype(jnp.float32) / m
  x0 = sample_source(noise_key, images.shape)
  x1 = images
  return TrainingTargets(
      x=interpolate(x0, x1, t),
      t=t,
      level=jnp.full((b,), level_flow, jnp.int32),
      cond=cond,
      target=flow_velocity(x0, x1),
      groups={"flow": jnp.ones((b,), jnp.float32)},
      metrics={"dropped_ratio": label_drop_ratio(model, cond, drop)},
  )
