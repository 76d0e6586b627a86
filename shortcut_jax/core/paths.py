"""Interpolation paths between the source x0 (t = 0) and the data x1 (t = 1).

A path is a small frozen dataclass with `interpolate(x0, x1, t)` (t float32 [B], broadcast over
the image axes) and the time derivatives of that same function, `velocity` (d x_t / dt) and
`acceleration` (d² x_t / dt²), both taken with `jax.jvp` of `interpolate` with respect to t:
a path only writes its coefficients, never its derivatives. Paths are chosen by name
(`config.objective.path`, `get_path`):

  * `linear` (the default and the original): x_t = (1 - (1 - 1e-5) t) x0 + t x1, velocity
    x1 - (1 - 1e-5) x0 (`interpolate` / `flow_velocity` below, the original's operation order, so
    faithful mode matches it bit for bit; `LinearPath.velocity` returns `flow_velocity`, which
    the tests check against the jvp), acceleration 0;
  * `smoothstep`: f = 3t² - 2t³, x_t = (1 - f) x0 + f x1 (zero velocity at both ends);
  * `cosine` (VP-like, trigonometric): x_t = cos(πt/2) x0 + sin(πt/2) x1, i.e. the usual
    x_τ = cos(πτ/2) data + sin(πτ/2) noise with τ = 1 - t, mapped to this repo's t = 0 noise,
    t = 1 data convention (a² + b² = 1: the marginal variance is preserved for unit data).
"""

import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.core.config_value import config_value

Array = Any

# The 1e-5 keeps the path from collapsing exactly onto the data at t = 1 (as the original does).
SIGMA_MIN = 1e-5
# Smallest source weight a(t) a data prediction is divided by (as "Back to Basics: Let Denoising
# Generative Models Denoise", 2025, clips 1 - t): bounds the implied velocity near t = 1.
MIN_SOURCE_WEIGHT = 0.05


def broadcast_time(t: Array, ndim: int) -> Array:
  """t [B] reshaped to [B, 1, ..., 1] for an array of rank `ndim`."""
  return t.reshape((-1,) + (1,) * (ndim - 1))


def interpolate(x0: Array, x1: Array, t: Array) -> Array:
  """x_t = (1 - (1 - 1e-5) t) x0 + t x1, with t [B] broadcast over the image axes."""
  t_full = broadcast_time(t, x1.ndim)
  # Same operation order as the original, so that faithful mode matches it bit for bit.
  return (1 - (1 - SIGMA_MIN) * t_full) * x0 + t_full * x1


def flow_velocity(x0: Array, x1: Array) -> Array:
  """The conditional velocity of the linear path, d x_t / dt = x1 - (1 - 1e-5) x0."""
  return x1 - (1 - SIGMA_MIN) * x0


@dataclasses.dataclass(frozen=True)
class Path:
  """x_t = a(t) x0 + b(t) x1; subclasses define `coefficients`, derivatives come from jvp."""
  name = "abstract"

  def coefficients(self, t: Array) -> Tuple[Array, Array]:
    """(a(t), b(t)) for t of any shape."""
    raise NotImplementedError

  def interpolate(self, x0: Array, x1: Array, t: Array) -> Array:
    a, b = self.coefficients(broadcast_time(t, x1.ndim))
    return a * x0 + b * x1

  def _time_derivative(self, fn: Callable[[Array], Array], t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]

  def velocity(self, x0: Array, x1: Array, t: Array) -> Array:
    """d x_t / dt at t (jvp of `interpolate`)."""
    return self._time_derivative(lambda tt: self.interpolate(x0, x1, tt), t)

  def acceleration(self, x0: Array, x1: Array, t: Array) -> Array:
    """d² x_t / dt² at t (jvp of the jvp)."""
    return self._time_derivative(lambda tt: self.jvp_velocity(x0, x1, tt), t)

  def velocity_from_data(self, x1_hat: Array, x_t: Array, t: Array,
                         min_source_weight: float = MIN_SOURCE_WEIGHT) -> Array:
    """The velocity a data prediction implies at (x_t, t): with x0 = (x_t - b x1) / a (a clamped
    below at `min_source_weight`, so it stays bounded as t -> 1), v = a' x0 + b' x1, the
    derivatives by jvp. A network predicting x1 ("x-prediction", `model.prediction='data'`)
    then serves every caller that expects a velocity."""
    tb = broadcast_time(jnp.asarray(t, jnp.float32), x_t.ndim)
    (a, b), (da, db) = jax.jvp(self.coefficients, (tb,), (jnp.ones_like(tb),))
    x0_hat = (x_t - b * x1_hat) / jnp.maximum(a, min_source_weight)
    return da * x0_hat + db * x1_hat

  def jvp_velocity(self, x0: Array, x1: Array, t: Array) -> Array:
    """The velocity by jvp even where a subclass returns a closed form (for `acceleration`)."""
    return Path.velocity(self, x0, x1, t)


@dataclasses.dataclass(frozen=True)
class LinearPath(Path):
  """The original's straight path (see the module docstring)."""
  name = "linear"

  def coefficients(self, t):
    return 1 - (1 - SIGMA_MIN) * t, t

  def interpolate(self, x0, x1, t):
    return interpolate(x0, x1, t)

  def velocity(self, x0, x1, t):
    # The exact fast path: the jvp of `interpolate` computes -(1 - 1e-5) x0 + x1 (equal up to
    # rounding, checked in tests/test_paths.py); the original's expression is kept.
    del t
    return flow_velocity(x0, x1)


@dataclasses.dataclass(frozen=True)
class SmoothstepPath(Path):
  """f = 3t² - 2t³, x_t = (1 - f) x0 + f x1."""
  name = "smoothstep"

  def coefficients(self, t):
    f = t * t * (3 - 2 * t)
    return 1 - f, f


@dataclasses.dataclass(frozen=True)
class CosinePath(Path):
  """x_t = cos(πt/2) x0 + sin(πt/2) x1 (VP-like; see the module docstring)."""
  name = "cosine"

  def coefficients(self, t):
    angle = (jnp.pi / 2) * t
    return jnp.cos(angle), jnp.sin(angle)


PATHS: Dict[str, Path] = {p.name: p for p in (LinearPath(), SmoothstepPath(), CosinePath())}


def get_path(name: str) -> Path:
  """The path registered as `name`; raises ValueError listing the known ones."""
  if name not in PATHS:
    raise ValueError(f"unknown path {name!r}; known paths: {sorted(PATHS)}")
  return PATHS[name]


def path_from_config(config) -> Path:
  """The path of an objective config (`path`, default 'linear')."""
  return get_path(config_value(config, "path"))
