"""Analytic oracles for Gaussian data, used as exact "networks" in objective and sampler tests.

Data x1 ~ N(m, s^2 I) (per-dimension m, s), source x0 ~ N(0, I), a = 1 - 1e-5 and
x_t = (1 - a t) x0 + t x1. Then x_t ~ N(mu_t, sigma_t^2) with mu_t = t m and
sigma_t^2 = (1 - a t)^2 + t^2 s^2, and the flow velocity is affine in x:

    u(x, t) = E[x1 - a x0 | x_t = x] = m + (c_t / sigma_t^2) (x - t m),  c_t = t s^2 - a (1 - a t).

Its ODE dx/dt = u(x, t) is solved by x(t) = mu_t + (sigma_t / sigma_t0)(x(t0) - mu_t0): the
derivative is m + (sigma_t' / sigma_t)(x - mu_t), and sigma_t' = c_t / sigma_t. The exact
shortcut over a step d is therefore s(x, t, d) = (x(t + d) - x) / d
= m + ((sigma_{t+d} - sigma_t) / (d sigma_t)) (x - t m), written below without cancellation.

A label-dependent variant shifts the mean by `label_shift * label` (the null label gets its own
mean), which gives conditional and unconditional velocities that differ, for CFG checks.
"""

import numpy as np
import jax.numpy as jnp

from shortcut_jax.models.velocity_model import VelocityModel

A = 1.0 - 1e-5


def sigma(t, s, xp=np):
  return xp.sqrt((1 - A * t) ** 2 + t ** 2 * s ** 2)


def _bcast(v, x, xp):
  return xp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def flow_velocity(x, t, m, s, xp=np):
  """u(x, t) for x [B, ...], t [B], m and s broadcastable to x[0]."""
  t = _bcast(t, x, xp)
  c = t * s ** 2 - A * (1 - A * t)
  return m + c / sigma(t, s, xp) ** 2 * (x - t * m)


def shortcut_velocity(x, t, d, m, s, xp=np):
  """s(x, t, d) = (x(t + d) - x) / d for the exact flow; d [B]."""
  t = _bcast(t, x, xp)
  d = _bcast(d, x, xp)
  sig_t, sig_td = sigma(t, s, xp), sigma(t + d, s, xp)
  # (sigma_{t+d}^2 - sigma_t^2) / d, expanded so that nothing cancels for small d.
  dvar = -A * (2 - A * (2 * t + d)) + s ** 2 * (2 * t + d)
  return m + dvar / ((sig_td + sig_t) * sig_t) * (x - t * m)


def ode_solution(x_start, t_start, t_end, m, s, xp=np):
  """x(t_end) of the exact flow from x(t_start) = x_start."""
  return (t_end * m + sigma(t_end, s, xp) / sigma(t_start, s, xp) * (x_start - t_start * m))


def label_mean(m, label, num_classes, label_shift, xp=np):
  """Per-sample mean: m + shift * label, and m - shift for the null label."""
  label = xp.asarray(label)
  offset = xp.where(label == num_classes, -1.0, label.astype(np.float32)) * label_shift
  return m[None] + xp.reshape(offset, (-1,) + (1,) * m.ndim)


def shortcut_oracle(m, s, *, num_classes=0, label_shift=0.0):
  """A `VelocityModel` returning the exact shortcut s(x, t, 2^-level); params are ignored."""
  m, s = np.asarray(m, np.float32), np.asarray(s, np.float32)

  def apply_fn(params, x, t, level, cond, train, rngs):
    del params, train, rngs
    mean = m if "label" not in cond else label_mean(m, cond["label"], num_classes, label_shift, jnp)
    d = jnp.power(2.0, -jnp.asarray(level, jnp.float32))
    return shortcut_velocity(x, t, d, mean, s, jnp)

  return VelocityModel(apply_fn=apply_fn, num_classes=num_classes)


def velocity_oracle(m, s, *, num_classes=0, label_shift=0.0):
  """A `VelocityModel` returning the exact instantaneous velocity u(x, t) (level ignored)."""
  m, s = np.asarray(m, np.float32), np.asarray(s, np.float32)

  def apply_fn(params, x, t, level, cond, train, rngs):
    del params, level, train, rngs
    mean = m if "label" not in cond else label_mean(m, cond["label"], num_classes, label_shift, jnp)
    return flow_velocity(x, t, mean, s, jnp)

  return VelocityModel(apply_fn=apply_fn, num_classes=num_classes)


# Small per-pixel Gaussian data [2, 2, 1] for the one-step objectives' tests (MeanFlow family).
M_SMALL = np.asarray([[[0.5], [-0.3]], [[0.1], [0.8]]], np.float32)
S_SMALL = np.asarray([[[0.4], [1.3]], [[0.9], [0.2]]], np.float32)


def average_velocity_oracle(m, s, *, num_classes=0, label_shift=0.0, guidance=False):
  """A `VelocityModel` returning the exact average velocity over d = 2^-level (the shortcut),
  label-shifted when it takes labels; with `guidance` it also takes guidance rows (and ignores
  them)."""
  from shortcut_jax.core import conditioning as cond_lib  # pylint: disable=g-import-not-at-top
  m, s = np.asarray(m, np.float32), np.asarray(s, np.float32)

  def apply_fn(params, x, t, level, cond, train, rngs):
    del params, train, rngs
    mean = m if "label" not in cond else label_mean(m, cond["label"], num_classes, label_shift, jnp)
    return shortcut_velocity(x, t, jnp.power(2.0, -jnp.asarray(level, jnp.float32)), mean, s, jnp)

  kinds = (cond_lib.LabelKind(num_classes),) + ((cond_lib.GuidanceKind(),) if guidance else ())
  return VelocityModel(apply_fn=apply_fn, conditioning=cond_lib.Conditioning(kinds))


def path_velocity(targets, images):
  """The linear path's velocity x1 - a x0 of each row of `targets` (x0 recovered from x_t)."""
  tb = np.asarray(targets.t).reshape((-1,) + (1,) * (np.ndim(images) - 1))
  x0 = (np.asarray(targets.x) - tb * np.asarray(images)) / (1 - A * tb)
  return np.asarray(images) - A * x0
