"""Flow-matching ("naive") objective.

The network, called at the finest level L = log2(denoise_timesteps), regresses onto the path's
velocity at x_t (`paths`; on the default linear path v = x1 - (1 - 1e-5) x0), with t uniform on
{0, 1/M, ..., (M-1)/M}.
"""

import jax
import jax.numpy as jnp

from shortcut_jax.core.conditioning import NOISE
from shortcut_jax.objectives.base import TrainingTargets, register_objective
from shortcut_jax.objectives.flow_path import (batch_for_targets, config_value, finest_level,
                                               sample_source, source_from_config)
from shortcut_jax.core.paths import path_from_config


@register_objective("naive", uses_level=False, takes_source=True)
def naive_targets(model, params, ema_params, batch, rng, config, *, step=None,
                  state=None) -> TrainingTargets:
  """Flow-matching targets for a whole batch.

  Args:
    model: the `VelocityModel` (only its conditioning helpers are used; no network call).
    params: unused (the signature is shared by all objectives).
    ema_params: unused.
    batch: dict with `image` float32 NHWC and optional conditioning keys (`label`, ...).
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `cfg_scale`, `faithful` and
      `faithful_scope` (`flow_path.batch_for_targets`), each condition kind's dropout
      probability (`class_dropout_prob`, `image_dropout_prob`), `path` and the source
      (`source`, `source_noise_step`; `flow_path.Source`).
    step, state: unused (stateless).

  Returns:
    TrainingTargets with a single group `flow` covering the batch.
  """
  del params, ema_params, step, state
  path = path_from_config(config)
  m = int(config_value(config, "denoise_timesteps"))
  level_flow = finest_level(m)
  # The original shuffles every batch in its update step; a shuffled input pipeline makes this
  # redundant, so only faithful mode spends a key on it.
  batch, cond, rng = batch_for_targets(model, batch, rng, config)
  images = batch["image"]
  b = images.shape[0]

  # The three draws use independent keys in the original too, so faithful and default agree here.
  label_key, time_key, noise_key = jax.random.split(rng, 3)
  cond, drop_metrics = model.drop_cond(cond, label_key, config)
  t = jax.random.randint(time_key, (b,), 0, m).astype(jnp.float32) / m
  # The source sees the condition before dropout: a coupling starts from the LR image even
  # where CFG dropout hides it from the network.
  x0 = sample_source(noise_key, images.shape, source_from_config(config), batch,
                     noise=batch.get(NOISE))
  x1 = images
  return TrainingTargets(
      x=path.interpolate(x0, x1, t),
      t=t,
      level=jnp.full((b,), level_flow, jnp.int32),
      cond=cond,
      target=path.velocity(x0, x1, t),
      groups={"flow": jnp.ones((b,), jnp.float32)},
      metrics=drop_metrics,
  )
