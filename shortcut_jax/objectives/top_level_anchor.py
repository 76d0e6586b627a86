"""The one-step level anchored to the flow target, for a flow that starts from one point.

A coupling flow without source noise (`objective.source='cond_image'`, `source_noise_step=0`,
super-resolution's default) starts every path of a condition at the same point x0, the
upsampled LR image. The flow out of one point is straight: x_t = (1 - t) x0 + t x1 pins x1
down, so its velocity at t = 0 is E[x1 | condition] - x0 and stays so along the line to the
conditional mean. Every level's average velocity at t = 0 is then that same vector, and its
unbiased one-sample target is the flow target at t = 0, x1 - x0: the MSE regressor's residual.

`objective.top_level_share` = s > 0 turns a share s of the shortcut objective's flow rows
(each row drawn with probability s) into rows of the one-step level (d = 1) at t = 0 with that
target, so the one-step jump is trained directly, as the residual regressor is, beside the
flow and the self-consistency rows. 0 (the default) leaves the objective unchanged.
"""

import jax
import jax.numpy as jnp

from shortcut_jax.objectives.base import register_field_checks
from shortcut_jax.objectives.flow_path import sample_source

FIELD = "top_level_share"


@register_field_checks
def check_fields(o, check) -> None:
  """`objective.top_level_share`: a share in [0, 1), only for a point source."""
  share = o[FIELD]
  check(isinstance(share, (int, float)) and 0.0 <= share < 1.0,
        f"objective.{FIELD} must be in [0, 1) (0: off), got {share!r}")
  if share:
    check(o.name == "shortcut", f"objective.{FIELD} is an option of objective 'shortcut', "
          f"not of {o.name!r}")
    check(o.source == "cond_image" and not o.source_noise_step and not o.faithful,
          f"objective.{FIELD} anchors the one-step level of a flow that starts from one point: "
          "it needs objective.source='cond_image', objective.source_noise_step=0 and "
          "objective.faithful=False")
    check(not o.guidance_max, f"objective.{FIELD} and objective.guidance_max (intrinsic guidance) "
          "both rewrite the flow rows' targets: use one of them")


def anchor_rows(flow, images, cond, key, *, share: float, finest: int, path, rule, source):
  """Flow rows (x_t, t, target) and their levels, a `share` of them made one-step rows.

  Args:
    flow: (x_t, t, target) of the flow rows.
    images: those rows' images x1.
    cond: those rows' conditions before dropout (the source reads the LR image).
    key: PRNG key for the choice of rows.
    share, finest: the share of rows; the flow rows' level.
    path, rule, source: the objective's path, jump rule and source (a point source).

  Returns:
    ((x_t, t, target), level int32 [n]): chosen rows at x0, t = 0, level 0 (d = 1), target the
    flow target at t = 0; the others as given, at `finest`.
  """
  x_t, t, target = flow
  n = x_t.shape[0]
  chosen = jax.random.bernoulli(key, share, (n,))
  x0 = sample_source(key, images.shape, source, cond)  # A point source: the key is not used.
  t0 = jnp.zeros((n,), jnp.float32)
  anchored = rule.flow_target(path, x0, images, t0)
  rows = chosen.reshape((n,) + (1,) * (x_t.ndim - 1))
  level = jnp.where(chosen, 0, finest).astype(jnp.int32)
  return (jnp.where(rows, x0, x_t), jnp.where(chosen, t0, t),
          jnp.where(rows, anchored, target)), level
