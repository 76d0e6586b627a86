"""Interpolation paths: jvp derivatives against finite differences, the linear path bit for bit."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from shortcut_jax.core import paths
from shortcut_jax.objectives import flow_path

rng = np.random.default_rng(0)
X0 = jnp.asarray(rng.normal(size=(5, 4, 4, 2)).astype(np.float32))
X1 = jnp.asarray(rng.normal(size=(5, 4, 4, 2)).astype(np.float32))
T = jnp.asarray([0.0, 0.13, 0.5, 0.77, 1.0], jnp.float32)


def _central_difference(fn, t, h):
  """(fn(t + h) - fn(t - h)) / 2h in float64 (fn evaluated in numpy)."""
  return (fn(t + h) - fn(t - h)) / (2 * h)


def _interp_np(path, t):
  a, b = path.coefficients(jnp.asarray(t, jnp.float32))
  a = np.asarray(a, np.float64).reshape(-1, 1, 1, 1)
  b = np.asarray(b, np.float64).reshape(-1, 1, 1, 1)
  return a * np.asarray(X0, np.float64) + b * np.asarray(X1, np.float64)


@pytest.mark.parametrize("name", sorted(paths.PATHS))
def test_velocity_and_acceleration_match_finite_differences(name):
  path = paths.get_path(name)
  t = np.asarray(T, np.float64)
  h = 1e-2
  # Coefficients are smooth; finite differences of a float64 evaluation of the float32
  # coefficients are accurate to O(h^2) plus float32 rounding / h.
  velocity_fd = _central_difference(lambda tt: _interp_np(path, tt), t, h)
  np.testing.assert_allclose(np.asarray(path.velocity(X0, X1, T)), velocity_fd, atol=2e-3)
  velocity_of = lambda tt: np.asarray(path.jvp_velocity(X0, X1, jnp.asarray(tt, jnp.float32)),
                                      np.float64)
  acceleration_fd = _central_difference(velocity_of, t, h)
  np.testing.assert_allclose(np.asarray(path.acceleration(X0, X1, T)), acceleration_fd,
                             atol=2e-2)


def test_closed_forms():
  # Known derivatives, so that a wrong coefficient cannot hide behind consistent derivatives.
  t = T.reshape(-1, 1, 1, 1)
  smooth = paths.get_path("smoothstep")
  np.testing.assert_allclose(smooth.velocity(X0, X1, T), 6 * t * (1 - t) * (X1 - X0), atol=1e-5)
  np.testing.assert_allclose(smooth.acceleration(X0, X1, T), (6 - 12 * t) * (X1 - X0),
                             atol=1e-4)
  cos = paths.get_path("cosine")
  w = jnp.pi / 2
  np.testing.assert_allclose(cos.interpolate(X0, X1, jnp.ones(5)), X1, atol=1e-6)
  np.testing.assert_allclose(cos.interpolate(X0, X1, jnp.zeros(5)), X0, atol=1e-6)
  np.testing.assert_allclose(cos.velocity(X0, X1, T),
                             w * (jnp.cos(w * t) * X1 - jnp.sin(w * t) * X0), atol=1e-5)
  np.testing.assert_allclose(cos.acceleration(X0, X1, T), -w * w * cos.interpolate(X0, X1, T),
                             atol=1e-5)
  np.testing.assert_array_equal(paths.get_path("linear").acceleration(X0, X1, T),
                                jnp.zeros_like(X0))


def test_linear_path_is_the_original_bit_for_bit():
  linear = paths.get_path("linear")
  for fn in (lambda f: f, jax.jit):
    np.testing.assert_array_equal(
        fn(linear.interpolate)(X0, X1, T), fn(flow_path.interpolate)(X0, X1, T))
    np.testing.assert_array_equal(
        fn(linear.velocity)(X0, X1, T), fn(lambda a, b, t: flow_path.flow_velocity(a, b))(X0, X1, T))
  # The jvp of the interpolation gives the same velocity up to rounding.
  np.testing.assert_allclose(linear.jvp_velocity(X0, X1, T), flow_path.flow_velocity(X0, X1),
                             rtol=0, atol=1e-6)
  np.testing.assert_array_equal(
      np.asarray(flow_path.interpolate(X0, X1, T)),
      np.asarray((1 - (1 - 1e-5) * T.reshape(-1, 1, 1, 1)) * X0 + T.reshape(-1, 1, 1, 1) * X1))


def test_registry_and_config():
  assert sorted(paths.PATHS) == ["cosine", "linear", "smoothstep"]
  assert paths.path_from_config({}).name == "linear"
  assert paths.path_from_config({"path": "cosine"}).name == "cosine"
  with pytest.raises(ValueError, match="known paths"):
    paths.get_path("quadratic")


@pytest.mark.parametrize("name", ["linear", "smoothstep", "cosine"])
def test_exact_data_prediction_implies_the_path_velocity(name):
  path = paths.get_path(name)
  t = jnp.asarray([0.0, 0.2, 0.5, 0.8], jnp.float32)  # Source weight a(t) >= 0.05 here.
  x0, x1 = X0[:4], X1[:4]
  x_t = path.interpolate(x0, x1, t)
  np.testing.assert_allclose(path.velocity_from_data(x1, x_t, t), path.velocity(x0, x1, t),
                             rtol=1e-5, atol=1e-5)
  # Near t = 1 the division is clamped: the implied velocity stays bounded.
  v = path.velocity_from_data(x1 + 0.1, path.interpolate(x0, x1, jnp.full((4,), 0.9999)),
                              jnp.full((4,), 0.9999))
  assert np.all(np.isfinite(np.asarray(v))) and float(jnp.max(jnp.abs(v))) < 1e3


def test_data_prediction_model_samples_its_prediction_in_one_step():
  from shortcut_jax import sampling
  from shortcut_jax.models import registry
  from shortcut_jax.models.velocity_model import VelocityModel
  target = X1[:4]
  predictor = VelocityModel(apply_fn=lambda p, x, t, lv, c, tr, r: target + 0 * x, num_classes=2)
  model = registry.data_prediction(predictor, paths.get_path("linear"))
  out = sampling.sample(model, {}, X0[:4], {}, num_steps=1, denoise_timesteps=8)
  # One Euler step from t = 0: x0 + (x1_hat - (1 - 1e-5) x0) = x1_hat + 1e-5 x0.
  np.testing.assert_allclose(np.asarray(out), np.asarray(target), atol=1e-4)
