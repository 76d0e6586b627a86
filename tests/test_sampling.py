"""Tests of the step schedule and the Euler sampler, against analytic Gaussian oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussian_oracle as go
from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax import sampling
from shortcut_jax.models.velocity_model import VelocityModel

SHAPE = (4, 4, 2)
NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("fast_compile")


def gaussian_params():
  rng = np.random.default_rng(0)
  return ((0.4 * rng.normal(size=SHAPE)).astype(np.float32),
          rng.uniform(0.3, 0.8, size=SHAPE).astype(np.float32))


M_DATA, S_DATA = gaussian_params()
EXACT = go.shortcut_oracle(M_DATA, S_DATA)
INSTANT = go.velocity_oracle(M_DATA, S_DATA)
X0 = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (6, *SHAPE)))
# The exact flow's endpoint from X0 (sigma_0 = 1, mu_0 = 0).
X1_EXACT = go.ode_solution(X0.astype(np.float64), 0.0, 1.0, M_DATA.astype(np.float64),
                           S_DATA.astype(np.float64))


# ------------------------------------------------------------------------------- step_schedule


@pytest.mark.parametrize("n", list(range(1, 129)))
def test_step_schedule_invariants(n):
  levels, sizes = sampling.step_schedule(n, 128)
  assert levels.dtype == np.int32 and len(levels) == len(sizes) == n
  assert sum(sizes) == 1.0  # Dyadic sizes: exact in floating point.
  np.testing.assert_array_equal(sizes, [2.0 ** -int(k) for k in levels])
  k = int(np.floor(np.log2(n)))
  if n == 2 ** k:
    np.testing.assert_array_equal(levels, k)
  else:
    assert np.sum(levels == k) == 2 ** (k + 1) - n
    assert np.sum(levels == k + 1) == 2 * n - 2 ** (k + 1)
    assert np.all(np.diff(levels) >= 0)  # Big steps first.
  # Every step starts on the time grid of its own level.
  starts = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
  np.testing.assert_array_equal(starts * 2.0 ** levels, np.round(starts * 2.0 ** levels))


def test_step_schedule_examples_and_errors():
  np.testing.assert_array_equal(sampling.step_schedule(3, 128)[0], [1, 2, 2])
  np.testing.assert_array_equal(sampling.step_schedule(5, 128)[0], [2, 2, 2, 3, 3])
  np.testing.assert_array_equal(sampling.step_schedule(7, 8)[0], [2, 3, 3, 3, 3, 3, 3])
  for bad in (0, -1, 129, 2.5):
    with pytest.raises(ValueError):
      sampling.step_schedule(bad, 128)
  with pytest.raises(ValueError):
    sampling.step_schedule(4, 100)


# ---------------------------------------------------------------------------- exact endpoints


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 128])
def test_exact_shortcut_lands_on_the_ode_endpoint(n):
  out = sampling.sample(EXACT, {}, jnp.asarray(X0), {}, num_steps=n, denoise_timesteps=128)
  np.testing.assert_allclose(np.asarray(out), X1_EXACT, atol=1e-4)


def test_velocity_oracle_needs_many_steps():
  many = sampling.sample(INSTANT, {}, jnp.asarray(X0), {}, num_steps=128, denoise_timesteps=128,
                         uses_level=False)
  one = sampling.sample(INSTANT, {}, jnp.asarray(X0), {}, num_steps=1, denoise_timesteps=128,
                        uses_level=False)
  assert np.abs(np.asarray(many) - X1_EXACT).max() < 0.05
  assert np.abs(np.asarray(one) - X1_EXACT).max() > 0.3


def _probe_model(kind):
  """Velocity = t or level (broadcast): x1 - x0 = sum_i d_i t_i (or d_i level_i)."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    v = t if kind == "t" else jnp.asarray(level, jnp.float32)
    return jnp.broadcast_to(v.reshape(-1, 1, 1, 1), x.shape)
  return VelocityModel(apply_fn=apply_fn)


@pytest.mark.parametrize("uses_level,n,want_t,want_level", [
    (True, 3, 0.5 * 0 + 0.25 * 0.5 + 0.25 * 0.75, 0.5 * 1 + 0.25 * 2 + 0.25 * 2),
    (True, 4, 0.25 * (0 + 0.25 + 0.5 + 0.75), 2.0),
    (False, 3, (0 + 1 / 3 + 2 / 3) / 3, 7.0),  # Flow models: uniform steps, always level L = 7.
])
def test_sampler_times_and_levels(uses_level, n, want_t, want_level):
  x0 = jnp.zeros((2, *SHAPE))
  for kind, want in (("t", want_t), ("level", want_level)):
    out = sampling.sample(_probe_model(kind), {}, x0, {}, num_steps=n, denoise_timesteps=128,
                          uses_level=uses_level)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6)


# ---------------------------------------------------------------------------------------- CFG


def test_cfg_is_one_batched_call_and_mixes_cond_and_uncond():
  calls = []
  inner = go.shortcut_oracle(M_DATA, S_DATA, num_classes=NUM_CLASSES, label_shift=0.3)

  def apply_fn(params, x, t, level, cond, train, rngs):
    calls.append(x.shape[0])
    return inner.apply_fn(params, x, t, level, cond, train, rngs)

  # An unguided image condition rides along: carried unchanged through the batch doubling.
  model = VelocityModel(apply_fn=apply_fn, conditioning=cond_lib.Conditioning(
      (cond_lib.LabelKind(NUM_CLASSES), cond_lib.ImageKind(guided=False))))
  labels = np.array([0, 1, 2, 3, 4, 1], np.int32)
  cond = {"label": jnp.asarray(labels), "cond_image": jnp.ones((6, 2, 2, 1))}
  w = 2.5
  out = sampling.sample(model, {}, jnp.asarray(X0), cond, num_steps=1, denoise_timesteps=128,
                        cfg_scale=w)
  assert calls == [12]  # Traced once, on the doubled batch.
  t0, d = np.zeros(6), np.ones(6)
  x0 = X0.astype(np.float64)
  mean_c = go.label_mean(M_DATA.astype(np.float64), labels, NUM_CLASSES, 0.3)
  mean_u = go.label_mean(M_DATA.astype(np.float64), np.full(6, NUM_CLASSES), NUM_CLASSES, 0.3)
  v_c = go.shortcut_velocity(x0, t0, d, mean_c, S_DATA.astype(np.float64))
  v_u = go.shortcut_velocity(x0, t0, d, mean_u, S_DATA.astype(np.float64))
  np.testing.assert_allclose(np.asarray(out), x0 + v_u + w * (v_c - v_u), atol=1e-5)
  assert np.abs(v_c - v_u).max() > 0.1  # The guidance is visible, so the check can fail.


@pytest.mark.parametrize("w", [1.0, 0.0])
def test_cfg_one_is_the_conditional_call_and_zero_the_unconditional_one(w):
  # The original's meaning (shortcut_jax.core.guidance): w = 1 is the conditional velocity, w = 0 the
  # unconditional one, each from exactly one network call on the batch (no doubling).
  calls = []
  inner = go.shortcut_oracle(M_DATA, S_DATA, num_classes=NUM_CLASSES, label_shift=0.3)

  def apply_fn(params, x, t, level, cond, train, rngs):
    calls.append(x.shape[0])
    return inner.apply_fn(params, x, t, level, cond, train, rngs)

  model = VelocityModel(apply_fn=apply_fn, num_classes=NUM_CLASSES)
  labels = np.array([0, 1, 2, 3, 4, 1], np.int32)
  out = sampling.sample(model, {}, jnp.asarray(X0), {"label": jnp.asarray(labels)}, num_steps=1,
                        denoise_timesteps=128, cfg_scale=w)
  assert calls == [6]  # Traced once: one call, on the batch itself (no doubling).
  x0 = X0.astype(np.float64)
  used = labels if w == 1.0 else np.full(6, NUM_CLASSES)
  mean = go.label_mean(M_DATA.astype(np.float64), used, NUM_CLASSES, 0.3)
  v = go.shortcut_velocity(x0, np.zeros(6), np.ones(6), mean, S_DATA.astype(np.float64))
  np.testing.assert_allclose(np.asarray(out), x0 + v, atol=1e-5)
  if w == 1.0:  # The same function as no guidance at all.
    plain = sampling.sample(model, {}, jnp.asarray(X0), {"label": jnp.asarray(labels)},
                            num_steps=1, denoise_timesteps=128)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


def test_make_sampler_is_cached():
  a = sampling.make_sampler(EXACT, 4, 128, True, None)
  b = sampling.make_sampler(EXACT, 4, 128, True, None)
  c = sampling.make_sampler(EXACT, 8, 128, True, None)
  assert a is b and a is not c
