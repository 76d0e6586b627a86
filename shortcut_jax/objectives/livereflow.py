"""Live reflow, as the original's `baselines/targets_livereflow.py`: reflow (Liu et al., 2023,
"Flow Straight and Fast") with its pairs made on the fly by the model being trained.

The batch is split in two parts, reflow part first:

* Reflow part, B_r = B // bootstrap_every rows: from fresh noise x0 the model itself (its online
  weights, no gradient: "live") integrates 8 Euler steps of 1/8 at the finest level L, guided
  with `cfg_scale` by the rows' labels unless `cfg_scale` is 0 (labels nulled); that gives a
  coupled pair (x0, x̂1). The row is trained at level 0 (the one-step jump) on the straight line
  between them: t uniform on {0, 1/M, ..., (M-1)/M}, input x_t = (1 - (1 - 1e-5) t) x0 + t x̂1,
  target x̂1 - x0. These rows keep their labels.
* Flow part, the other B - B_r rows: flow-matching targets at level L, condition kinds dropped
  with their probabilities.

The network takes the step size (`uses_level=True`), but only levels 0 and L are trained, so
the sampler (`reflow_schedule`, the original's evaluation) takes N uniform Euler steps of 1/N at
level 0 (the reflowed velocity) for N < M, and at level L (the flow) for N = M.

`faithful=True` keeps the original's code as it runs (checked against its own outputs by
`shortcut_jax.tools.check_original_targets`): the batch is shuffled with its own key (not with
`faithful_scope='get_targets'`, `flow_path.batch_for_targets`);
one key split in three (label, time, noise) with the noise and time keys used twice, so the
reflow rows' x0 and t are the flow part's first rows' x0 and t; the flow part takes the first
B - B_r rows of the batch (the first B_r images appear in both parts, the last B_r are never
used). The default draws each with its own key and gives the flow part the rows B_r .. B-1.

Differences from the published method: reflow generates its pairs once with a converged flow
(and may repeat); live reflow makes them every step with the model still training, from only
8 Euler steps, and trains the straightened flow at a separate level of the same network.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.core import guidance
from shortcut_jax.core.conditioning import concat_rows, take_rows
from shortcut_jax.objectives.base import TrainingTargets, register_objective, rms
from shortcut_jax.objectives.flow_path import (batch_for_targets, config_value, finest_level,
                                               interpolate, sample_source)
from shortcut_jax.core.paths import path_from_config

Array = Any
ROLLOUT_STEPS = 8  # The original's rollout length.


def reflow_schedule(num_steps: int, denoise_timesteps: int):
  """(times, sizes, levels) of the sampler: N uniform steps, at level 0 for N < M, else L."""
  finest = finest_level(denoise_timesteps)
  n = int(num_steps)
  if n != num_steps or n < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  level = 0 if n < denoise_timesteps else finest
  return (np.arange(n, dtype=np.float32) / n, np.full(n, 1.0 / n, np.float32),
          np.full(n, level, np.int32))


def rollout(model, params, x0, cond, finest: int, cfg_scale: float,
            steps: int = ROLLOUT_STEPS):
  """`steps` Euler steps of 1/steps from x0 at t = 0 at level `finest`, guided with `cfg_scale`
  (unguided when it is 0); no gradient. Returns x̂1."""
  n = x0.shape[0]
  level = jnp.full((n,), finest, jnp.int32)
  w = None if cfg_scale == 0 else cfg_scale  # 0: the labels are nulled already.
  velocity = lambda x, t: guidance.guided_velocity(model, params, x, t, level, cond, w)

  def body(i, x):
    t = jnp.full((n,), i / steps, jnp.float32)
    return x + (1.0 / steps) * velocity(x, t).astype(x.dtype)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, body, x0))


@register_objective("livereflow", uses_level=True, schedule=reflow_schedule,
                    splits_batch=True)
def livereflow_targets(model, params, ema_params, batch, rng, config, *, step=None,
                       state=None) -> TrainingTargets:
  """Live-reflow targets: reflow rows first, flow-matching rows after (see the module docstring).

  Args:
    model: the `VelocityModel` (its online weights make the reflow pairs).
    params: online weights.
    ema_params: unused (the original rolls out the online weights).
    batch: dict with `image` and optional conditioning keys.
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `bootstrap_every`, `cfg_scale`, `faithful`,
      `faithful_scope`, `path` (flow part) and the condition kinds' dropout probabilities.
    step, state: unused (stateless).

  Returns:
    TrainingTargets with groups `reflow` (first B // bootstrap_every rows) and `flow`.
  """
  del ema_params, step, state
  m = int(config_value(config, "denoise_timesteps"))
  finest = finest_level(m)
  faithful = bool(config_value(config, "faithful"))
  cfg_scale = float(config_value(config, "cfg_scale"))
  path = path_from_config(config)
  batch, cond, rng = batch_for_targets(model, batch, rng, config)
  images = batch["image"]
  b = images.shape[0]
  b_r = b // int(config_value(config, "bootstrap_every"))
  teacher = jax.lax.stop_gradient(params)

  if faithful:
    label_key, time_key, noise_key = jax.random.split(rng, 3)
    cond_dropped, drop_metrics = model.drop_cond(cond, label_key, config)
    t = jax.random.randint(time_key, (b,), 0, m).astype(jnp.float32) / m
    x0 = sample_source(noise_key, images.shape)
    x0_r = x0[:b_r]  # The original draws the same noise again for the reflow rows.
    t_r = jax.random.randint(time_key, (b_r,), 0, m).astype(jnp.float32) / m
    flow_rows = slice(0, b - b_r)
    x1_flow, t_flow, x0_flow = images[flow_rows], t[flow_rows], x0[flow_rows]
    cond_flow = take_rows(cond_dropped, flow_rows)
  else:
    label_key, time_key, noise_key, r_time_key, r_noise_key = jax.random.split(rng, 5)
    flow_rows = slice(b_r, b)
    cond_flow, drop_metrics = model.drop_cond(take_rows(cond, flow_rows), label_key, config)
    x1_flow = images[flow_rows]
    t_flow = jax.random.randint(time_key, (b - b_r,), 0, m).astype(jnp.float32) / m
    x0_flow = sample_source(noise_key, x1_flow.shape)
    x0_r = sample_source(r_noise_key, (b_r,) + images.shape[1:])
    t_r = jax.random.randint(r_time_key, (b_r,), 0, m).astype(jnp.float32) / m

  cond_r = take_rows(cond, slice(0, b_r))
  if b_r:
    # Unguided (cfg_scale = 0), the original rolls out with the null label whatever labels its
    # get_targets is given (a no-op where `batch_for_targets` has nulled them already).
    x1_r = rollout(model, teacher, x0_r, model.unguided_cond(cond_r, config), finest, cfg_scale)
  else:
    x1_r = jnp.zeros_like(x0_r)
  v_r = x1_r - x0_r
  x_r = interpolate(x0_r, x1_r, t_r)
  x_flow, v_flow = path.interpolate(x0_flow, x1_flow, t_flow), path.velocity(x0_flow, x1_flow,
                                                                             t_flow)
  is_reflow = jnp.arange(b) < b_r
  return TrainingTargets(
      x=jnp.concatenate([x_r, x_flow], axis=0),
      t=jnp.concatenate([t_r, t_flow], axis=0),
      level=jnp.concatenate([jnp.zeros((b_r,), jnp.int32),
                             jnp.full((b - b_r,), finest, jnp.int32)]),
      cond=concat_rows(cond_r, cond_flow),
      target=jnp.concatenate([v_r, v_flow], axis=0),
      groups={"reflow": is_reflow.astype(jnp.float32), "flow": (~is_reflow).astype(jnp.float32)},
      metrics={**drop_metrics, "v_magnitude_reflow": rms(v_r),
               "reflow_ratio": jnp.mean(is_reflow.astype(jnp.float32))})
