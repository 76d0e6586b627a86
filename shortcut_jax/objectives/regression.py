"""A deterministic regressor on the same network: one pass from the condition to the sample.

The honest baseline a one-step generative model has to beat (for super-resolution: the DiT
trained with MSE to predict the HR image from the LR input). It is written as a one-step flow
from a fixed all-zero source (`source='zeros'`): the network is called at x = 0, t = 0 and the
finest level, and regresses onto x1 - (1 - 1e-5) * 0 = x1, so the ordinary one-step sampler
(x1 = 0 + 1 * v) returns its prediction and every evaluator works unchanged. It samples in one
step only.

With `source='cond_image'` (super-resolution) the start is the upsampled LR input instead and
the network regresses the residual HR - upsampled LR (residual learning, as VDSR; Kim et al.,
CVPR 2016): the DiT's zero-initialised output layer makes the untrained model bicubic
upsampling, and the one-step sampler adds the residual to the same start.
"""

import jax
import jax.numpy as jnp

from shortcut_jax.core.conditioning import cond_from_batch
from shortcut_jax.objectives.base import TrainingTargets, register_objective
from shortcut_jax.objectives.flow_path import (config_value, finest_level, flow_velocity,
                                               sample_source, source_from_config)


@register_objective("regression", uses_level=False, source="zeros", max_sample_steps=1,
                    takes_source=True)
def regression_targets(model, params, ema_params, batch, rng, config, *, step=None,
                       state=None) -> TrainingTargets:
  """MSE regression of the batch's `image` from its conditioning (at x = 0, t = 0).

  Args:
    model: the `VelocityModel` (only its conditioning helpers are used).
    params: unused.
    ema_params: unused.
    batch: dict with `image` and conditioning keys (e.g. `cond_image`).
    rng: PRNG key (condition dropout only).
    config: objective config (`denoise_timesteps` for the level, dropout probabilities,
      `cfg_scale`, `source`: the default start is zeros, 'cond_image' the residual form).

  Returns:
    TrainingTargets with one group `regression`.
  """
  del params, ema_params, step, state
  images = batch["image"]
  b = images.shape[0]
  level = finest_level(int(config_value(config, "denoise_timesteps")))
  # The start sees the condition before dropout (a coupling starts from the LR input).
  x0 = sample_source(jax.random.PRNGKey(0), images.shape,
                     source_from_config(config, "zeros"), batch)
  cond = model.unguided_cond(cond_from_batch(batch), config)
  cond, drop_metrics = model.drop_cond(cond, rng, config)
  return TrainingTargets(
      x=x0, t=jnp.zeros((b,), jnp.float32), level=jnp.full((b,), level, jnp.int32), cond=cond,
      target=flow_velocity(x0, images), groups={"regression": jnp.ones((b,), jnp.float32)},
      metrics=drop_metrics)
