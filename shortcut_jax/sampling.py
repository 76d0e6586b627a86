"""Few-step sampling of shortcut, flow-matching and other objectives' models.

From x at t = 0 (source noise) the sampler takes N steps and returns x at t = 1. A step is the
objective's `sampler_step` (`objectives.base`): by default the Euler step
`x <- x + d v(x, t, level)`; MeanFlow's average-velocity jump has the same form, and an objective
with another integrator (a second-order Taylor step, predict-and-renoise) brings its own step and,
if it needs one, its own schedule. Without an objective the sampler is the Euler one. Shortcut models ask the network for the shortcut of the step they take
(level k for a step of 2^-k); flow-matching models always use the finest level L and uniform
steps 1/N.

Any N >= 1 works with trained levels only (`step_schedule`). The guidance scale w has the
original's meaning (`shortcut_jax.core.guidance`): w = 1 (or None) is the conditional velocity from one
call on the batch, w = 0 the unconditional one (the null condition, one call), and any other w
`v_u + w (v_c - v_u)` with the conditional and unconditional velocities from one call on the
doubled batch. The whole loop is one jitted function, compiled once per (model, N, guidance,
input shapes) and cached.

A step that draws fresh noise (`Objective.sampler_noise`: the multistep consistency sampler)
gets it from keys, never from the sample's values: the sampler takes one key per image, and
step j of image i draws from `fold_in(key_i, j)` (`step_noise`), so an image's samples depend on
its key and its start only, whatever the batch, the mesh or the other rows.
"""

import functools
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.core import guidance
from shortcut_jax.objectives.base import euler_step
from shortcut_jax.objectives.flow_path import finest_level

Array = Any


def step_schedule(num_steps: int, denoise_timesteps: int) -> Tuple[np.ndarray, np.ndarray]:
  """Levels and step sizes of an N-step shortcut sampler; the sizes are powers of two summing to 1.

  A power of two N takes N steps at level log2(N). For 2^k < N < 2^(k+1) it takes 2^(k+1) - N
  steps of size 2^-k followed by 2N - 2^(k+1) steps of size 2^-(k+1). The big steps come first
  so that every step starts on the time grid its level was trained on (t a multiple of its own
  size): after j big steps t = j 2^-k, a multiple of both sizes.

  Args:
    num_steps: N >= 1.
    denoise_timesteps: M, a power of two; N must not exceed M (level log2(N) would be finer than
      any level the shortcut objective trains).

  Returns:
    (levels int32 [N], step sizes float64 [N]), step i of size 2^-levels[i].

  Raises:
    ValueError: N < 1, N > M, or M not a power of two.
  """
  finest = finest_level(denoise_timesteps)
  n = int(num_steps)
  if n != num_steps or n < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  if n > denoise_timesteps:
    raise ValueError(f"num_steps={n} exceeds denoise_timesteps={denoise_timesteps}: a shortcut "
                     f"model is trained for steps no finer than 2^-{finest}")
  k = n.bit_length() - 1  # floor(log2(n)), exact for integers.
  if n == 1 << k:
    levels = np.full(n, k, np.int32)
  else:
    num_big = (1 << (k + 1)) - n
    num_small = 2 * n - (1 << (k + 1))
    levels = np.concatenate([np.full(num_big, k), np.full(num_small, k + 1)]).astype(np.int32)
  return levels, np.exp2(-levels.astype(np.float64))


def flow_schedule(num_steps: int, denoise_timesteps: int) -> Tuple[np.ndarray, np.ndarray]:
  """Levels (all L) and uniform step sizes 1/N of a flow-matching sampler; any N >= 1."""
  finest = finest_level(denoise_timesteps)
  n = int(num_steps)
  if n != num_steps or n < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  return np.full(n, finest, np.int32), np.full(n, 1.0 / n)


def _schedule(num_steps, denoise_timesteps, uses_level):
  """(times, sizes, levels) arrays of the sampler's steps."""
  if uses_level:
    levels, sizes = step_schedule(num_steps, denoise_timesteps)
    times = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])  # Exact: dyadic partial sums.
  else:
    levels, sizes = flow_schedule(num_steps, denoise_timesteps)
    times = np.arange(num_steps) / num_steps
  return times.astype(np.float32), sizes.astype(np.float32), levels


def _plan(num_steps: int, denoise_timesteps: int, uses_level: bool, cfg_scale, objective):
  """(times, sizes, levels, step_fn, w, draws_noise) of a sampler (see `make_sampler`)."""
  if objective is not None and objective.schedule is not None:
    times, sizes, levels = objective.schedule(num_steps, denoise_timesteps)
    times, sizes = np.asarray(times, np.float32), np.asarray(sizes, np.float32)
  else:
    times, sizes, levels = _schedule(num_steps, denoise_timesteps, uses_level)
  step_fn = euler_step if objective is None else objective.sampler_step
  w = None if cfg_scale is None or float(cfg_scale) == 1.0 else float(cfg_scale)
  draws_noise = bool(objective is not None and objective.sampler_noise)
  return times, sizes, levels, step_fn, w, draws_noise


def _predictor(model, params, cond, w):
  """`predict(x, t [B], level [B])`: the network output, guided by w (see `make_sampler`): w None
  (= 1) the conditional velocity, w = 0 the unconditional one, one call each."""
  cond = dict(cond)

  def predict(x, t_b, level_b):
    if w == 0.0:
      return model(params, x, t_b, level_b, model.null_cond(cond), train=False)
    return guidance.guided_velocity(model, params, x, t_b, level_b, cond, w)
  return predict


def _take_step(step_fn, draws_noise, predict, x, t, d, level, noise):
  """One sampler step from the scalar time t by d at `level`, on every row of x."""
  b = x.shape[0]
  t_b = jnp.full((b,), t, jnp.float32)
  level_b = jnp.full((b,), level, jnp.asarray(level).dtype)
  if draws_noise:
    return step_fn(predict, x, t_b, d, level_b, noise.astype(x.dtype))
  return step_fn(predict, x, t_b, d, level_b)


def step_noise(keys: Array, step, shape: Tuple[int, ...]) -> Array:
  """The fresh noise of sampler step `step` (0-based): row i is standard normal of `shape` from
  `fold_in(keys[i], step)`, keys[i] being image i's key (the key its source sample was drawn
  from, `generate`: `fold_in(PRNGKey(seed), i)`; the original folds the step into its key the
  same way). A row's noise depends on its key and the step only: not on the batch, the mesh
  or the sample's values."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(keys)


def _check_keys(draws_noise, keys, objective, what="keys (one PRNG key per image, e.g. "
                "fold_in(PRNGKey(seed), i))"):
  if draws_noise and keys is None:
    raise ValueError(f"the sampler of objective {objective.name!r} draws fresh noise every "
                     f"step: pass {what}")


@functools.lru_cache(maxsize=64)
def make_sampler(model, num_steps: int, denoise_timesteps: int, uses_level: bool = True,
                 cfg_scale: Optional[float] = None, objective=None):
  """A jitted `fn(params, x0, cond, keys=None) -> x1` running the whole N-step loop on device.

  Cached: the same arguments return the same jitted function, so repeated sampling (evaluators,
  grids) compiles once per input shape.

  Args:
    model: the `VelocityModel`.
    num_steps: N.
    denoise_timesteps: M (the finest level L = log2 M).
    uses_level: shortcut model (levels per `step_schedule`) or flow model (level L, steps 1/N).
    cfg_scale: guidance weight w: None or 1 conditional (one call per step), 0 unconditional
      (the null condition, one call per step), else guided (one call on the doubled batch).
    objective: a registered `Objective` whose `sampler_step` (and `schedule`, when it has one)
      the sampler uses; None: Euler steps on the default schedule.

  Returns:
    The jitted sampler. `keys` (one PRNG key per row, [B] of keys) is required when the
    objective's step draws noise (`Objective.sampler_noise`): step j's noise is
    `step_noise(keys, j, ...)`; other samplers ignore it.
  """
  times, sizes, levels, step_fn, w, draws_noise = _plan(num_steps, denoise_timesteps,
                                                         uses_level, cfg_scale, objective)

  def run(params, x0, cond, keys=None):
    _check_keys(draws_noise, keys, objective)
    predict = _predictor(model, params, cond, w)

    def body(x, step):
      j, t, d, level = step
      noise = step_noise(keys, j, x.shape[1:]) if draws_noise else None
      return _take_step(step_fn, draws_noise, predict, x, t, d, level, noise), None

    x1, _ = jax.lax.scan(body, x0, (jnp.arange(len(times), dtype=jnp.int32), jnp.asarray(times),
                                    jnp.asarray(sizes), jnp.asarray(levels)))
    return x1

  return jax.jit(run)


@functools.lru_cache(maxsize=64)
def make_step(model, num_steps: int, denoise_timesteps: int, uses_level: bool = True,
              cfg_scale: Optional[float] = None, objective=None):
  """One step at a time of `make_sampler`'s loop (the same schedule, guidance and step): a
  jitted `fn(params, x, cond, j, noise=None) -> x after step j` (j an int32 scalar, traced:
  one compile for every step). `noise` (standard normal like x) is required when the
  objective's step draws noise; `make_sampler` passes `step_noise(keys, j, ...)`, a caller that
  blends rows between steps (tiled super-resolution) crops its own. Cached like `make_sampler`.
  """
  times, sizes, levels, step_fn, w, draws_noise = _plan(num_steps, denoise_timesteps,
                                                         uses_level, cfg_scale, objective)

  def run(params, x, cond, j, noise=None):
    _check_keys(draws_noise, noise, objective, "the step's noise")
    predict = _predictor(model, params, cond, w)
    pick = lambda a: jnp.asarray(a)[j]
    return _take_step(step_fn, draws_noise, predict, x, pick(times), pick(sizes), pick(levels),
                      noise)

  return jax.jit(run)


def sample(model, params, x0: Array, cond: Mapping[str, Array], *, num_steps: int,
           denoise_timesteps: int, uses_level: bool = True,
           cfg_scale: Optional[float] = None, objective=None, keys: Optional[Array] = None
           ) -> Array:
  """Integrates from source noise x0 (t = 0) to t = 1 with `num_steps` steps (Euler, or the
  objective's step).

  Args:
    model: the `VelocityModel`.
    params: network weights.
    x0: [B, H, W, C] source samples.
    cond: conditioning dict (any keys; each value has batch size B).
    num_steps: N.
    denoise_timesteps: M.
    uses_level: whether the model is a shortcut model (see `make_sampler`).
    cfg_scale: guidance weight (None or 1: conditional; 0: unconditional; see `make_sampler`).
    objective: optional registered `Objective` (see `make_sampler`).
    keys: one PRNG key per row of x0 ([B] keys); required by a sampler that draws noise
      (`Objective.sampler_noise`, e.g. the consistency sampler), ignored by the others.

  Returns:
    The samples at t = 1, like x0.
  """
  fn = make_sampler(model, int(num_steps), int(denoise_timesteps), bool(uses_level),
                    None if cfg_scale is None else float(cfg_scale), objective)
  return fn(params, x0, cond, keys)

