"""Progressive distillation (Salimans & Ho, 2022), as the original's
`baselines/targets_progressive.py`.

A student learns to take, in one step of size d, the two steps of size d/2 its teacher takes;
then it becomes the teacher and d doubles. Training is split into L = log2(M) phases of equal
length (M = `denoise_timesteps`, the phases spread over `objective.schedule_steps`, which
follows `max_steps`): in phase p = 0 .. L-1 the student trains at level k = L - 1 - p (steps of
d = 2^-k, i.e. an M/2-step sampler in phase 0 down to a 1-step sampler in the last phase), with

    t = randint(0, 2^k) / 2^k,  x_t on the path,
    v1 = T(x_t, t),  x' = clip(x_t + (d/2) v1, -4, 4),  v2 = T(x', t + d/2),
    target = (v1 + v2) / 2

(T the teacher; its network, like the student's, ignores the step size: `uses_level=False`, as
the original builds it with `ignore_dt`). The teacher of phase 0 is the frozen flow-matching run
named by `objective.teacher_workdir` (`objectives.teacher`; the student starts as a copy of it);
at every phase boundary the teacher becomes a copy of the student's EMA weights (its online
weights when `bootstrap_ema` is off). The optimizer state carries on across phases, as in the
original. With `bootstrap_cfg` the teacher's velocities in phase 0 are guided with `cfg_scale`
(later phases distill an already guided teacher with weight 1), as in the original.

Objective state (checkpointed, so a run resumes exactly mid-phase): `teacher` (the teacher's
weights, sharded like the parameters) and `phase` (int32: the phase the teacher was made for).

Sampling: Euler steps of 1/N (the student is good at the step count of the phase it last
trained: 1 step at the end of a full run).

`faithful=True` keeps the original's code as it runs (checked against its own outputs by
`shortcut_jax.tools.check_original_targets`):
  * the batch is shuffled with its own key (the original's update step; not with
    `faithful_scope='get_targets'`, `flow_path.batch_for_targets`);
  * no condition dropout: labels are kept (the unconditional branch of CFG sampling is then
    only what the student inherited from its teacher);
  * the phase of the targets is floor(step / (max_steps / L)) (float division), while the
    teacher is refreshed after the update that makes the step s + 1 with (s + 2) % P == 0,
    P = max_steps // L (the original's loop counter starts at 2): one step before the phase
    changes, or several when max_steps is not a multiple of L, so the last step(s) of a phase
    distill the student from itself.
The default fixes these: condition kinds are dropped with their probabilities (the teacher sees
the same dropped conditions, so the unconditional branch is distilled too), and the teacher is
refreshed exactly when the phase changes (phase = floor(step L / schedule_steps)).

Differences from the published method: the published student is trained with its own
x-prediction / v-parameterisation and a truncated-SNR weighting over DDIM steps of a variance-
preserving diffusion (4 to 8 thousand steps per phase, 8192 -> 1 step); here (and in the
original) it is the velocity of the linear flow path with a plain MSE, and the teacher's steps
are Euler steps with the intermediate point clipped to [-4, 4].
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from shortcut_jax.core import guidance
from shortcut_jax.objectives import teacher as teacher_lib
from shortcut_jax.objectives.base import TrainingTargets, register_objective, rms
from shortcut_jax.objectives.flow_path import (batch_for_targets, config_value, finest_level,
                                               sample_source)
from shortcut_jax.core.paths import Path, path_from_config

Array = Any


@dataclasses.dataclass(frozen=True)
class ProgressiveSettings:
  finest: int
  schedule_steps: int
  faithful: bool
  use_cfg: bool
  cfg_scale: float
  path: Path

  @classmethod
  def from_config(cls, config) -> "ProgressiveSettings":
    return cls(finest=finest_level(int(config_value(config, "denoise_timesteps"))),
               schedule_steps=int(config_value(config, "schedule_steps")),
               faithful=bool(config_value(config, "faithful")),
               use_cfg=bool(config_value(config, "bootstrap_cfg")),
               cfg_scale=float(config_value(config, "cfg_scale")),
               path=path_from_config(config))


def phase_of_step(step: Array, st: ProgressiveSettings) -> Array:
  """The phase (int32) step `step` trains in: floor(step L / schedule_steps), at most L - 1."""
  step = jnp.asarray(step, jnp.int32)
  return jnp.minimum(step * st.finest // st.schedule_steps, st.finest - 1).astype(jnp.int32)


# The original's `train_state.step` at this library's step 0: progressive distillation starts
# from the teacher's checkpoint, whose step the original resets to 0 when it loads it.
ORIGINAL_START_STEP = 0


def faithful_phase(step: Array, st: ProgressiveSettings) -> Array:
  """The original's floor(step / (max_steps / L)) in float32, clipped to the phases (its step is
  this library's: `ORIGINAL_START_STEP`)."""
  phase = jnp.floor(jnp.asarray(step, jnp.float32) / (st.schedule_steps / st.finest))
  return jnp.clip(phase, 0, st.finest - 1).astype(jnp.int32)


def two_step_target(model, teacher, x_t, t, level, cond, weight=None):
  """The teacher's two steps of d/2 = 2^-(level+1) from (x_t, t), as one velocity over d.

  Returns:
    (target, v1, v2).
  """
  teacher_fn = lambda x, tt, lvl: guidance.guided_velocity(model, teacher, x, tt, lvl, cond, weight)
  v1, v2 = teacher_lib.two_half_steps(teacher_fn, x_t, t, level)
  return (v1 + v2) / 2, v1, v2


def init_progressive_state(params, config=None) -> dict:
  return {**teacher_lib.init_teacher_state(params, config), "phase": jnp.zeros((), jnp.int32)}


def update_progressive_state(state, *, step, params, ema_params, config):
  """After the update of step `step` (the state is now at step + 1): a new phase makes the
  student's weights the teacher."""
  st = ProgressiveSettings.from_config(config)
  new_step = jnp.asarray(step, jnp.int32) + 1
  if st.faithful:
    period = max(st.schedule_steps // st.finest, 1)
    refresh = (new_step + 1) % period == 0
    phase = jnp.minimum(state["phase"] + refresh.astype(jnp.int32), st.finest - 1)
  else:
    phase = phase_of_step(new_step, st)
    refresh = phase != state["phase"]
  old = state[teacher_lib.TEACHER]
  source = jax.tree.map(lambda new, o: new.astype(o.dtype),
                        teacher_lib.teacher_weights(params, ema_params, config), old)
  teacher = jax.lax.cond(refresh, lambda new, o: new, lambda new, o: o, source, old)
  return {**state, teacher_lib.TEACHER: teacher, "phase": phase}


@register_objective("progressive", uses_level=False, init_state=init_progressive_state,
                    update_state=update_progressive_state,
                    needs_teacher=True,
                    phased=True)
def progressive_targets(model, params, ema_params, batch, rng, config, *, step=None,
                        state=None) -> TrainingTargets:
  """Progressive-distillation targets for the whole batch (see the module docstring).

  Args:
    model: the `VelocityModel` (called with the teacher's weights).
    params, ema_params: unused (the teacher lives in `state`).
    batch: dict with `image` and optional conditioning keys.
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `schedule_steps`, `faithful`,
      `faithful_scope`, `bootstrap_cfg`, `cfg_scale`, `path` and the condition kinds' dropout
      probabilities.
    step: the training step (int32); state: `{'teacher', 'phase'}`.

  Returns:
    TrainingTargets with one group `distill`.
  """
  del params, ema_params
  st = ProgressiveSettings.from_config(config)
  step = jnp.zeros((), jnp.int32) if step is None else step
  phase = faithful_phase(step, st) if st.faithful else state["phase"]
  batch, cond, rng = batch_for_targets(model, batch, rng, config)
  images = batch["image"]
  b = images.shape[0]
  if st.faithful:
    time_key, noise_key = jax.random.split(rng)
    drop_metrics = {}
  else:
    label_key, time_key, noise_key = jax.random.split(rng, 3)
    cond, drop_metrics = model.drop_cond(cond, label_key, config)
  level = jnp.full((b,), st.finest - 1 - phase, jnp.int32)
  grid = jnp.asarray(2, jnp.int32) ** level
  t = jax.random.randint(time_key, (b,), 0, grid).astype(jnp.float32) / grid.astype(jnp.float32)
  x0 = sample_source(noise_key, images.shape)
  x_t = st.path.interpolate(x0, images, t)
  weight = None
  if st.use_cfg:
    weight = jnp.where(phase == 0, st.cfg_scale, 1.0).astype(jnp.float32)
  target, v1, v2 = two_step_target(model, state[teacher_lib.TEACHER], x_t, t, level, cond,
                                   weight)
  return TrainingTargets(
      x=x_t, t=t, level=level, cond=cond, target=target,
      groups={"distill": jnp.ones((b,), jnp.float32)},
      metrics={**drop_metrics, "phase": phase.astype(jnp.float32),
               "dt_base": level[0].astype(jnp.float32),
               "v_magnitude_bootstrap": rms(target), "v_magnitude_b1": rms(v1),
               "v_magnitude_b2": rms(v2)})
