"""Flow-matching ("naive") objective.

The network, called at the finest level L = log2(denoise_timesteps), regresses onto the flow
velocity v = x1 - (1 - 1e-5) x0 at x_t (`flow_path`), with t uniform on {0, 1/M, ..., (M-1)/M}.
"""

import jax
import jax.numpy as jnp

from shortcut_jax.models.velocity_model import cond_from_batch
from shortcut_jax.objectives.base import TrainingTargets, register_objective
from shortcut_jax.objectives.flow_path import (config_value, finest_level, flow_velocity,
                                               interpolate, label_drop_ratio,
                                               null_all_labels_if_unguided, permute_batch,
                                               sample_source)


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
