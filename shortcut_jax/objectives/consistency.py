"""Consistency models (Song et al., 2023) as the original's `baselines/targets_consistency_*.py`:
consistency distillation (`consistency-distillation`, from a frozen teacher) and consistency
training (`consistency`, no teacher).

Parameterisation. A consistency function maps any point of an ODE trajectory to its end at
t = 1 (the data). The network's output F (a velocity, so every sampler and evaluator keeps
working) is read through the skip / out form

    f(x, t) = c_skip(t) x + c_out(t) F(x, t),   c_skip = 1,  c_out = 1 - t   (`consistency_fn`)

which meets the boundary condition f(x, 1) = x exactly. (The published models use EDM's
c_skip = σ_d² / ((σ - σ_min)² + σ_d²), c_out = σ_d (σ - σ_min) / sqrt(σ² + σ_d²) in a
variance-exploding σ; the original, and this port, use the linear path's own form.) The target
network f⁻ is the student's EMA (the original's `call_model_ema`; `bootstrap_ema=False`: its
online weights without gradient, except with `faithful=True`: the original never reads
`bootstrap_ema` here). For a pair of adjacent times t < t' on one trajectory the student must
satisfy f(x_t, t) = f⁻(x_t', t'), i.e. its velocity output must be

    target = (f⁻(x_t', t') - x_t) / (1 - t)        (`velocity_target`),

and the loss is the MSE of the velocity (the original's: the consistency-function MSE weighted
by 1 / (1 - t)²; the published loss is a distance on f itself, L2 or LPIPS, weight 1).

`consistency-distillation`: t uniform on {0, 1/M, ..., (M-1)/M}, t' = t + 1/M, and x_t' one
Euler step of the frozen teacher (`objectives.teacher`; the student starts as a copy of it),
`x_t' = clip(x_t + v_T(x_t, t) / M, -4, 4)` (the published method uses a Heun step of the
teacher's probability-flow ODE and a target EMA rate of its own; here the EMA rate is
`optim.ema_rate`). Sampling: Euler steps of 1/N, as the original samples it (one step is
x0 + F(x0, 0) = f(x0, 0); N steps walk towards each step's prediction of x1 along the straight
line, a deterministic multistep sampler).

`consistency` (consistency training): no teacher; x_t and x_t' lie on the same straight line
between one (x0, x1) pair, which is an unbiased one-sample stand-in for the ODE step. The N
schedule is the original's: training is split into L = log2(M) phases of equal length
(`objective.schedule_steps`, following `max_steps`); phase p uses N = 2^p intervals, t uniform on
{0, 1/N, ..., (N-1)/N} and t' = t + 1/N (so phase 0 is the single pair (0, 1): a one-step
regression onto the data). The published schedule grows N as a square root of the step from 2
to 150 and ties the target EMA rate to N. Sampling (`renoise_step`, the multistep consistency
sampler of the paper and of the original's inference code): predict x1 = f(x, t), re-noise it
to the next time, x' = t' x1 + (1 - t') ε with fresh noise ε, repeat; the last step returns the
prediction itself (t' = 1), so one step is f(x0, 0).

The sampler's fresh noise comes from keys, as the original's (its starting noise's key folded
with the step index): the objective is registered with `sampler_noise=True`, and the sampler
gives step j of image i standard normal noise from `fold_in(key_i, j)`, key_i the key of the
image's starting noise (`sampling.step_noise`; generation: `fold_in(PRNGKey(seed), i)`). The same
seed gives the same images for any batch size and mesh, and nudging the sample does not redraw
the noise. (An earlier version hashed the noise's key from the sample's float bits: one ulp
changed the image. Samples of the same seed therefore differ from that version's.)

`faithful=True` keeps the original's code as it runs (checked against its own outputs by
`shortcut_jax.tools.check_original_targets`): the batch is shuffled with its own key (not with
`faithful_scope='get_targets'`, `flow_path.batch_for_targets`), the teacher and the target
network are EMA weights whatever `bootstrap_ema` says, condition kinds are never dropped (labels
kept: CFG sampling then guides with an unconditional branch the student never trained, beyond
what it inherited), and for `consistency` the phase is computed from the step counted from 1
(the original's train state starts at step 1, `ORIGINAL_START_STEP`). The
default drops condition kinds with their probabilities, with the same (dropped) conditions for
the teacher, the target network and the student.

Both network inputs ignore the step size (`uses_level=False`: the original builds the DiT with
`ignore_dt`); they only work on the linear path (checked by the config validation).
"""

from typing import Any

import jax
import jax.numpy as jnp

from shortcut_jax.objectives import teacher as teacher_lib
from shortcut_jax.objectives.base import TrainingTargets, register_objective, rms
from shortcut_jax.objectives.flow_path import (batch_for_targets, config_value, finest_level,
                                               sample_source)
from shortcut_jax.core.paths import broadcast_time, path_from_config

Array = Any


def consistency_fn(x: Array, t: Array, velocity: Array) -> Array:
  """f(x, t) = x + (1 - t) F: the consistency function of a velocity output F (t [B])."""
  return x + broadcast_time(1.0 - t, x.ndim) * velocity.astype(x.dtype)


def velocity_target(x_t: Array, t: Array, target_x1: Array) -> Array:
  """The velocity output whose consistency function at (x_t, t) is `target_x1`."""
  return (target_x1 - x_t) / broadcast_time(1.0 - t, x_t.ndim)


def target_weights(params, ema_params, config):
  """The target network f⁻: EMA weights (the original) or, without `bootstrap_ema`, the online
  weights (no gradient). `faithful=True`: always the EMA weights, as the original's
  `call_model_ema`, which does not read `bootstrap_ema`."""
  use_ema = (config_value(config, "bootstrap_ema")
             or config_value(config, "faithful"))
  return jax.lax.stop_gradient(ema_params if use_ema else params)


def _prepare(model, batch, rng, config, num_keys: int):
  """(images, cond, keys, drop metrics): the faithful shuffle, the cfg_scale = 0 nulling
  (`flow_path.batch_for_targets`), and condition dropout unless faithful."""
  faithful = bool(config_value(config, "faithful"))
  batch, cond, rng = batch_for_targets(model, batch, rng, config)
  if faithful:
    return batch["image"], cond, jax.random.split(rng, num_keys), {}
  label_key, *keys = jax.random.split(rng, num_keys + 1)
  cond, metrics = model.drop_cond(cond, label_key, config)
  return batch["image"], cond, keys, metrics


def distillation_step_target(model, teacher, target_net, x_t, t, d, level, cond):
  """Consistency distillation's target at (x_t, t): the teacher's Euler step to t + d, then the
  target network's consistency function there.

  Returns:
    (target, teacher velocity, target-network velocity).
  """
  v_teacher = jax.lax.stop_gradient(model(teacher, x_t, t, level, cond, train=False))
  x_next = jnp.clip(x_t + broadcast_time(d, x_t.ndim) * v_teacher.astype(x_t.dtype),
                    -teacher_lib.TEACHER_CLIP, teacher_lib.TEACHER_CLIP)
  t_next = t + d
  v_next = jax.lax.stop_gradient(model(target_net, x_next, t_next, level, cond, train=False))
  return velocity_target(x_t, t, consistency_fn(x_next, t_next, v_next)), v_teacher, v_next


def training_pair_target(model, target_net, x0, x1, t, t_next, level, cond, path):
  """Consistency training's target at x_t: x_t and x_t' on the path between the same (x0, x1).

  Returns:
    (x_t, target, target-network velocity).
  """
  x_t = path.interpolate(x0, x1, t)
  x_next = path.interpolate(x0, x1, t_next)
  v_next = jax.lax.stop_gradient(model(target_net, x_next, t_next, level, cond, train=False))
  return x_t, velocity_target(x_t, t, consistency_fn(x_next, t_next, v_next)), v_next


@register_objective("consistency-distillation", uses_level=False,
                    init_state=teacher_lib.init_teacher_state,
                    needs_teacher=True,
                    linear_path_only=True)
def consistency_distillation_targets(model, params, ema_params, batch, rng, config, *, step=None,
                                     state=None) -> TrainingTargets:
  """Consistency-distillation targets for the whole batch (see the module docstring).

  Args:
    model: the `VelocityModel`.
    params, ema_params: the student's weights (the target network is one of them).
    batch: dict with `image` and optional conditioning keys.
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `bootstrap_ema`, `faithful`, `cfg_scale` and
      the condition kinds' dropout probabilities.
    step: unused; state: `{'teacher'}`.

  Returns:
    TrainingTargets with one group `consistency`.
  """
  del step
  m = int(config_value(config, "denoise_timesteps"))
  finest = finest_level(m)
  path = path_from_config(config)
  images, cond, (time_key, noise_key), drop_metrics = _prepare(model, batch, rng, config, 2)
  b = images.shape[0]
  t = jax.random.randint(time_key, (b,), 0, m).astype(jnp.float32) / m
  x_t = path.interpolate(sample_source(noise_key, images.shape), images, t)
  level = jnp.full((b,), finest, jnp.int32)
  d = jnp.full((b,), 1.0 / m, jnp.float32)
  target, v_teacher, v_next = distillation_step_target(
      model, state[teacher_lib.TEACHER], target_weights(params, ema_params, config), x_t, t, d,
      level, cond)
  return TrainingTargets(
      x=x_t, t=t, level=level, cond=cond, target=target,
      groups={"consistency": jnp.ones((b,), jnp.float32)},
      metrics={**drop_metrics, "v_magnitude_bootstrap": rms(target),
               "v_magnitude_b1": rms(v_teacher), "v_magnitude_b2": rms(v_next)})


def renoise_step(predict, x: Array, t: Array, d: Array, level: Array, noise: Array) -> Array:
  """One step of the multistep consistency sampler: x1 = f(x, t), then x' = t' x1 + (1 - t') ε
  at t' = t + d with ε = `noise` (standard normal like x, fresh for this step: the sampler draws
  it from the image's key, `sampling.step_noise`), the original's formula; x' = x1 at t' = 1."""
  x1 = consistency_fn(x, t, predict(x, t, level))
  t_next = broadcast_time(t + d, x.ndim)
  return t_next * x1 + (1.0 - t_next) * noise.astype(x.dtype)


# The original's `train_state.step` at this library's step 0: consistency training starts from
# a fresh `TrainStateEma`, whose step is 1.
ORIGINAL_START_STEP = 1


def training_phase(step, config) -> Array:
  """Consistency training's phase p (N = 2^p intervals): floor(step L / schedule_steps), at most
  L - 1 (the step counted from `ORIGINAL_START_STEP` = 1 when `faithful`, as the original's)."""
  finest = finest_level(int(config_value(config, "denoise_timesteps")))
  total = int(config_value(config, "schedule_steps"))
  step = jnp.zeros((), jnp.int32) if step is None else jnp.asarray(step, jnp.int32)
  if config_value(config, "faithful"):
    step = step + ORIGINAL_START_STEP
  return jnp.minimum(step * finest // total, finest - 1).astype(jnp.int32)


@register_objective("consistency", uses_level=False, sampler_step=renoise_step,
                    sampler_noise=True, phased=True, linear_path_only=True)
def consistency_training_targets(model, params, ema_params, batch, rng, config, *, step=None,
                                 state=None) -> TrainingTargets:
  """Consistency-training targets for the whole batch (see the module docstring).

  Args:
    model: the `VelocityModel` (called as the target network).
    params, ema_params: the student's weights (the target network is one of them).
    batch: dict with `image` and optional conditioning keys.
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `schedule_steps`, `bootstrap_ema`,
      `faithful`, `cfg_scale` and the condition kinds' dropout probabilities.
    step: the training step (int32, sets N); state: unused.

  Returns:
    TrainingTargets with one group `consistency`.
  """
  del state
  path = path_from_config(config)
  phase = training_phase(step, config)
  images, cond, (time_key, noise_key), drop_metrics = _prepare(model, batch, rng, config, 2)
  b = images.shape[0]
  sections = jnp.asarray(2, jnp.int32) ** phase
  n = sections.astype(jnp.float32)
  t = jax.random.randint(time_key, (b,), 0, sections).astype(jnp.float32) / n
  x0 = sample_source(noise_key, images.shape)
  level = jnp.full((b,), phase, jnp.int32)
  x_t, target, v_next = training_pair_target(
      model, target_weights(params, ema_params, config), x0, images, t, t + 1.0 / n, level, cond,
      path)
  return TrainingTargets(
      x=x_t, t=t, level=level, cond=cond, target=target,
      groups={"consistency": jnp.ones((b,), jnp.float32)},
      metrics={**drop_metrics, "dt_base": phase.astype(jnp.float32), "num_intervals": n,
               "v_magnitude_bootstrap": rms(target), "v_magnitude_b2": rms(v_next)})
