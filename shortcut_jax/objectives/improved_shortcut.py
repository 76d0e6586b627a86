"""The improved shortcut models' ingredients (iSM, NeurIPS 2025), each a switch on the shortcut
objective (`objectives.shortcut`), off by default:

  * twin EMA (`objective.target_ema_rate`): a fast EMA of the online weights, kept in the
    objective state, gives the bootstrap targets;
  * intrinsic guidance (`objective.guidance_max`): the guidance scale as a network input and a
    guidance target at d = 0;
  * the multi-level wavelet loss (`objective.wavelet_levels`, `core.wavelets`);
and the checks of those fields. (sOT, the fourth ingredient, is a data-side coupling:
`data.ot_coupling`.)
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.core import guidance, wavelets
from shortcut_jax.core.conditioning import GUIDANCE
from shortcut_jax.objectives.base import TrainingTargets, mse_loss, register_field_checks
from shortcut_jax.objectives.flow_path import config_value

Array = Any


def intrinsic_scales(key, n: int, st) -> Array:  # st: shortcut.ShortcutSettings
  """Each row's guidance as the network's input, w = 1 + omega, omega uniform on the grid
  {0, grid, ..., guidance_max} (iSM: 0.25 up to 3.5)."""
  count = int(np.floor(st.guidance_max / st.guidance_grid + 1e-6)) + 1
  return 1.0 + st.guidance_grid * jax.random.randint(key, (n,), 0, count).astype(jnp.float32)


def intrinsic_guidance_target(model, teacher, flow, cond, st):
  """The flow rows' targets with intrinsic guidance (iSM's guidance term at d = 0):
  v + omega sg(v_c - v_u), omega = w - 1 of the row's guidance input, v_c and v_u the teacher's
  conditional and unconditional velocities at the finest level without guidance (w = 1; one
  call, each row beside its unconditional twin); omega = 0 where t < `guidance_t_min`. A row
  whose label was dropped has v_c = v_u: plain flow matching."""
  x, t, v = flow
  n = x.shape[0]
  omega = cond[GUIDANCE][:, 0] - 1.0
  level = jnp.full((n,), st.finest, jnp.int32)
  v_c, v_u = guidance.conditional_and_unconditional(
      model, teacher, x, t, level, guidance.with_guidance(model, cond, 1.0, n), interleave=True)
  coef = jnp.where(t >= st.guidance_t_min, omega, 0.0).reshape((-1,) + (1,) * (x.ndim - 1))
  return x, t, v + coef * jax.lax.stop_gradient(v_c - v_u)


TARGET_EMA = "target_ema"


def twin_ema_state(params, config) -> dict:
  """The objective state: with twin EMA (`target_ema_rate` > 0) the teacher's own EMA of the
  online weights, starting as them; else none."""
  return {TARGET_EMA: params} if config_value(config, "target_ema_rate") else {}


def update_twin_ema(state, *, step, params, ema_params, config) -> dict:
  """After each update: target_ema <- rate * target_ema + (1 - rate) * params."""
  del step, ema_params
  if TARGET_EMA not in state:
    return state
  rate = config_value(config, "target_ema_rate")
  return dict(state, **{TARGET_EMA: jax.tree.map(
      lambda e, p: (rate * e + (1 - rate) * p).astype(e.dtype), state[TARGET_EMA], params)})


def shortcut_loss(pred, targets: TrainingTargets, config):
  """The per-sample MSE, or with `wavelet_levels` > 0 the multi-level wavelet loss."""
  levels = config_value(config, "wavelet_levels")
  if not levels:
    return mse_loss(pred, targets)
  return wavelets.wavelet_loss(pred, targets.target, levels), {}


# The improved-shortcut-model switches (`objective.*`), off at 0.
ISM_FIELDS = ("target_ema_rate", "wavelet_levels", "guidance_max")


@register_field_checks
def check_fields(o, check) -> None:
  """Ranges of the shortcut objective's own fields; the iSM switches belong to it alone."""
  check(0.0 <= o.target_ema_rate < 1.0,
        f"objective.target_ema_rate (twin EMA) must be in (0, 1), or 0 for off; got "
        f"{o.target_ema_rate!r}")
  check(isinstance(o.wavelet_levels, int) and o.wavelet_levels >= 0,
        f"objective.wavelet_levels must be an integer >= 0, got {o.wavelet_levels!r}")
  check(o.guidance_max >= 0, f"objective.guidance_max must be >= 0 (0: off), got {o.guidance_max!r}")
  check(o.guidance_grid > 0, f"objective.guidance_grid must be > 0, got {o.guidance_grid!r}")
  check(0.0 <= o.guidance_t_min <= 1.0,
        f"objective.guidance_t_min must be in [0, 1], got {o.guidance_t_min!r}")
  if o.name != "shortcut":
    for field in ISM_FIELDS:
      check(not o[field], f"objective.{field} is an option of objective 'shortcut' "
            f"(improved shortcut models), not of {o.name!r}")


def check_config(c, check) -> None:
  """Intrinsic guidance needs the guidance input and the default batch layout."""
  if c.objective.guidance_max:
    check(c.model.guidance_input, "objective.guidance_max (intrinsic guidance) gives the network "
          "its guidance as an input: set model.guidance_input=True")
    check(not c.objective.bootstrap_cfg and not c.objective.faithful, "objective.guidance_max "
          "(intrinsic guidance) replaces bootstrap_cfg and needs the default layout: set "
          "objective.bootstrap_cfg=False and objective.faithful=False")
