"""Higher-order matching ("HOMO", arXiv 2502.00688) on the shortcut model's layout.

Two outputs: a velocity u1(x_t, t, d) and an acceleration u2(v, x_t, t, d), concatenated along
the channel axis of the network output (`Objective.outputs`; `models.registry` builds u2 as a
second DiT that takes u1's velocity as extra input channels, or as a second output head of one
DiT: `model.acceleration`). A jump of size d is the second-order Taylor step

    x_{t+d} = x_t + d · u1 + ½ d² · u2                                        (`taylor_step`)

which is also the sampler step, so every evaluator, `eval.py` mode and FID samples HOMO models.

The batch is laid out as for a shortcut model (`shortcut.default_layout`: every
bootstrap_every-th row is a self-consistency row at a level k < L, the rest flow rows at the
finest level L), with a second-order `JumpRule`:

* flow rows: targets (dx_t/dt, d²x_t/dt²) of the interpolation path (`objective.path`), both by
  `jax.jvp` of the path (`paths.Path.velocity` / `acceleration`);
* self-consistency rows, jump d = 2^-k from (x_t, t): two half steps h = d / 2 of the teacher
  (EMA weights when `bootstrap_ema`, no gradient) at level k + 1, each itself a second-order
  step, (v_a, a_a) at x_t, x' = clip(x_t + h v_a + ½ h² a_a, ±4), (v_b, a_b) at (x', t + h).
  The two half steps move by h (v_a + v_b) + ½ h² (a_a + a_b) = d · (v_a + v_b) / 2 + ½ d² ·
  (a_a + a_b) / 4, so the targets are u1 ← clip((v_a + v_b) / 2, ±4) (the velocity target the
  HOMO paper gives) and u2 ← (a_a + a_b) / 4: one jump then lands where the two half jumps do.
  `homo_sc_acceleration=False` drops the u2 term on these rows (velocity self-consistency only;
  u2 is then trained at the finest level alone).

Loss per sample: `homo_lambda_v · |u1 - dx/dt|² + homo_lambda_a · |u2 - d²x/dt²|²` on flow rows
and `homo_lambda_sc · (|u1 - sc_v|² + |u2 - sc_a|²)` on self-consistency rows (mean squared
errors over the image axes). `train/loss_flow` / `train/loss_bootstrap` are the weighted group
means; `train/mse_velocity`, `train/mse_acceleration` (flow rows) and `train/mse_sc_velocity`,
`train/mse_sc_acceleration` the plain ones.

On the straight `linear` path the acceleration target is zero and u2 learns nothing: use a
curved path (`smoothstep`, `cosine`); the config validation warns on the linear path.
"""

import functools
from typing import Any

import jax.numpy as jnp

from shortcut_jax.objectives.base import per_sample_mse, register_field_checks, register_objective
from shortcut_jax.objectives.flow_path import config_value
from shortcut_jax.core.paths import Path
from shortcut_jax.objectives import teacher as teacher_lib
from shortcut_jax.objectives.shortcut import (TEACHER_CLIP, JumpRule, ShortcutSettings,
                                              default_layout, teacher_output)

Array = Any
OUTPUTS = ("velocity", "acceleration")


def split_output(out: Array):
  """(velocity, acceleration) halves of a HOMO network output (channels concatenated)."""
  return jnp.split(out, 2, axis=-1)


def _expand(d: Array, ndim: int) -> Array:
  d = jnp.asarray(d, jnp.float32)
  return d.reshape(d.shape + (1,) * (ndim - d.ndim)) if d.ndim else d


def taylor_step(predict, x: Array, t: Array, d: Array, level: Array) -> Array:
  """x + d u1 + ½ d² u2: the second-order sampler step (d a scalar or [B])."""
  v, a = split_output(predict(x, t, level))
  d = _expand(d, x.ndim)
  return x + (d * v + 0.5 * d * d * a).astype(x.dtype)


def flow_target(path: Path, x0, x1, t):
  """(dx_t/dt, d²x_t/dt²) of the path, concatenated along channels."""
  return jnp.concatenate([path.velocity(x0, x1, t), path.acceleration(x0, x1, t)], axis=-1)


def second_order_bootstrap(model, teacher_params, x_t, t, level, cond, *, num_cfg: int = 0,
                           cfg_mask=None, cfg_scale: float = 0.0, sc_acceleration: bool = True):
  """Self-consistency targets from two second-order teacher half steps (module docstring).

  Returns:
    (target [.., 2C] (velocity, acceleration), v_a, v_b).
  """
  teacher = lambda x, tt, lvl: teacher_output(model, teacher_params, x, tt, lvl, cond, num_cfg,
                                              cfg_mask, cfg_scale)

  def advance(x, out, h):  # x + h u1 + h^2/2 u2.
    v, a = split_output(out)
    return x + h * v + 0.5 * h * h * a
  out_a, out_b = teacher_lib.two_half_steps(teacher, x_t, t, level, advance)
  (v_a, a_a), (v_b, a_b) = split_output(out_a), split_output(out_b)
  v_target = jnp.clip((v_a + v_b) / 2, -TEACHER_CLIP, TEACHER_CLIP)
  a_target = (a_a + a_b) / 4 if sc_acceleration else jnp.zeros_like(a_a)
  return jnp.concatenate([v_target, a_target], axis=-1), v_a, v_b


def homo_loss(pred: Array, targets, config):
  """The weighted per-sample HOMO loss and its plain terms (module docstring)."""
  lambda_v = float(config_value(config, "homo_lambda_v"))
  lambda_a = float(config_value(config, "homo_lambda_a"))
  lambda_sc = float(config_value(config, "homo_lambda_sc"))
  sc_acc = bool(config_value(config, "homo_sc_acceleration"))
  pred_v, pred_a = split_output(pred)
  target_v, target_a = split_output(targets.target)
  mse_v, mse_a = per_sample_mse(pred_v, target_v), per_sample_mse(pred_a, target_a)
  is_sc = targets.groups["bootstrap"]
  is_flow = 1.0 - is_sc
  per_sample = (is_flow * (lambda_v * mse_v + lambda_a * mse_a)
                + is_sc * lambda_sc * (mse_v + (mse_a if sc_acc else 0.0)))
  mean_over = lambda x, mask: jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  metrics = {"mse_velocity": mean_over(mse_v, is_flow),
             "mse_acceleration": mean_over(mse_a, is_flow),
             "mse_sc_velocity": mean_over(mse_v, is_sc),
             "mse_sc_acceleration": mean_over(mse_a, is_sc)}
  return per_sample, metrics


@register_field_checks
def check_fields(o, check) -> None:
  """Ranges of HOMO's loss weights."""
  for name in ("homo_lambda_v", "homo_lambda_a", "homo_lambda_sc"):
    check(o[name] >= 0, f"objective.{name} must be >= 0, got {o[name]!r}")


@register_objective("homo", uses_level=True, outputs=OUTPUTS, loss_fn=homo_loss,
                    sampler_step=taylor_step, takes_source=True, splits_batch=True,
                    needs_curved_path=True)
def homo_targets(model, params, ema_params, batch, rng, config, *, step=None, state=None):
  """HOMO targets: self-consistency and flow rows laid out as the shortcut model's default.

  Args: as `shortcut.shortcut_targets` (`faithful` is ignored: HOMO has no original layout to
  keep), plus `homo_sc_acceleration`.
  """
  del step, state
  sc_acc = bool(config_value(config, "homo_sc_acceleration"))
  rule = JumpRule(flow_target=flow_target,
                  bootstrap_targets=functools.partial(second_order_bootstrap,
                                                      sc_acceleration=sc_acc))
  settings = ShortcutSettings.from_config(config, rule=rule)
  teacher = ema_params if config_value(config, "bootstrap_ema") else params
  return default_layout(model, teacher, batch, rng, config, settings)
