"""MeanFlow: the exact average velocity of Gaussian data is a fixed point of the target, jvp
through the DiT against finite differences, the adaptive loss, config checks, and a smoke run
that trains, resumes and samples through `evaluation.run`."""

import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import digits_configs
import gaussian_oracle as go
from shortcut_jax import config as config_lib
from shortcut_jax import objectives
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import meanflow

M = np.asarray([[[0.5], [-0.3]], [[0.1], [0.8]]], np.float32)  # [2, 2, 1] per-pixel means
S = np.asarray([[[0.4], [1.3]], [[0.9], [0.2]]], np.float32)
FINEST = 14  # denoise_timesteps 2^14: the level cap (intervals < 2^-14) hardly matters.
RK4_STEPS = 64


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def _rk4_average_velocity(x, t, d):
  """(x(t + d) - x) / d by RK4 on the exact instantaneous velocity of the Gaussian data."""
  h = d.reshape((-1,) + (1,) * (x.ndim - 1)) / RK4_STEPS
  v = lambda y, s: go.flow_velocity(y, s, M, S, jnp)

  def body(i, y):
    s = t + i * h.reshape(-1)
    k1 = v(y, s)
    k2 = v(y + h / 2 * k1, s + h.reshape(-1) / 2)
    k3 = v(y + h / 2 * k2, s + h.reshape(-1) / 2)
    k4 = v(y + h * k3, s + h.reshape(-1))
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  end = jax.lax.fori_loop(0, RK4_STEPS, body, x)
  return (end - x) / d.reshape(h.shape)


def _average_velocity_model():
  """A `VelocityModel` returning the exact average velocity over d = 2^-level (RK4)."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    del params, cond, train, rngs
    return _rk4_average_velocity(x, t, jnp.power(2.0, -jnp.asarray(level, jnp.float32)))
  return VelocityModel(apply_fn=apply_fn)


def _draws(n=6, seed=0):
  rng = np.random.default_rng(seed)
  t = jnp.asarray(rng.uniform(0.0, 0.7, n), jnp.float32)
  d = jnp.asarray(rng.uniform(0.05, 1.0, n), jnp.float32) * (1 - t)
  x = jnp.asarray(rng.normal(size=(n,) + M.shape), jnp.float32)
  return x, t, d


def test_rk4_matches_the_closed_form_flow():
  x, t, d = _draws()
  np.testing.assert_allclose(_rk4_average_velocity(x, t, d),
                             go.shortcut_velocity(x, t, d, M, S, jnp), rtol=1e-4, atol=1e-4)


def test_exact_average_velocity_is_a_fixed_point():
  x, t, d = _draws()
  model = _average_velocity_model()
  network = lambda xx, tt, dd: model({}, xx, tt, meanflow.interval_level(dd, FINEST), {})
  v = go.flow_velocity(x, t, M, S, jnp)  # the marginal velocity at (x_t, t)
  target, u = meanflow.mean_flow_target(network, x, t, d, v)
  np.testing.assert_allclose(u, go.shortcut_velocity(x, t, d, M, S, jnp), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(target, u, rtol=2e-4, atol=2e-4)
  # The test can fail: the instantaneous velocity is not a fixed point (the field is curved).
  instant = lambda xx, tt, dd: go.flow_velocity(xx, tt, M, S, jnp)
  target_v, u_v = meanflow.mean_flow_target(instant, x, t, d, v)
  assert np.max(np.abs(np.asarray(target_v - u_v))) > 1e-2


def test_targets_of_the_objective_on_gaussian_data():
  # With the conditional velocity v_c the target is u + (v_c - v)(1 + d k), where u = m +
  # k (x - t m) is the exact average velocity (affine in x: du/dx = k) and v the marginal one.
  n = 16
  images = jnp.asarray(M[None] + S[None] * np.random.default_rng(1).normal(size=(n,) + M.shape),
                       jnp.float32)
  config = dict(denoise_timesteps=2 ** FINEST, cfg_scale=0.0, class_dropout_prob=0.0,
                meanflow_equal_share=0.25)
  tg = objectives.get_objective("meanflow").targets(
      _average_velocity_model(), {}, {}, {"image": images}, jax.random.PRNGKey(3), config)
  t = np.asarray(tg.t)
  d = np.exp2(-np.asarray(tg.level, np.float64))
  instant = np.asarray(tg.groups["instant"]) > 0
  assert instant.sum() == 4 and np.all(instant[-4:])
  assert np.all((t >= 0) & (t + np.where(instant, 0, d) <= 1 + 1e-6))
  a = 1 - 1e-5
  tb = t.reshape(-1, 1, 1, 1)
  x0 = (np.asarray(tg.x) - tb * np.asarray(images)) / (1 - a * tb)
  v_c = np.asarray(images) - a * x0
  v = np.asarray(go.flow_velocity(tg.x, tg.t, M, S, jnp))
  target = np.asarray(tg.target)
  # r = t rows: the target is the conditional velocity itself.
  np.testing.assert_allclose(target[instant], v_c[instant], rtol=1e-5, atol=1e-5)
  avg = ~instant & (d > 2.0 ** -FINEST)
  dd = jnp.asarray(d[avg], jnp.float32)
  u = np.asarray(go.shortcut_velocity(tg.x[avg], tg.t[avg], dd, M, S, jnp))
  ones = jnp.ones_like(tg.x[avg])
  k = np.asarray(go.shortcut_velocity(tg.x[avg] + ones, tg.t[avg], dd, M, S, jnp)) - u
  want = u + (v_c[avg] - v[avg]) * (1 + d[avg].reshape(-1, 1, 1, 1) * k)
  np.testing.assert_allclose(target[avg], want, rtol=2e-3, atol=2e-3)


def _random_dit(impl):
  module = dit_lib.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
                       out_channels=1, class_dropout_prob=0.0, num_classes=3,
                       dtype=jnp.float32, attention_impl=impl)
  params = module.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 4, 4, 1)),
                       jnp.zeros((1,)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
  # Zero-initialised output layers would make every derivative zero: randomise all weights.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)]
  return dit_lib.velocity_model(module), jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("impl", ["xla", "einsum"])
def test_jvp_through_the_dit_matches_finite_differences(impl):
  model, params = _random_dit(impl)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)
  t = jnp.asarray([0.1, 0.4, 0.6], jnp.float32)
  d = jnp.asarray([0.3, 0.2, 0.35], jnp.float32)
  cond = {"label": jnp.asarray([0, 2, 3], jnp.int32)}
  network = lambda xx, tt, dd: model(params, xx, tt, meanflow.interval_level(dd, 7), cond)
  target, u = meanflow.mean_flow_target(network, x, t, d, v)
  du = (target - v) / d.reshape(-1, 1, 1, 1)
  h = 1e-2
  fd = (network(x + h * v, t + h, d - h) - network(x - h * v, t - h, d + h)) / (2 * h)
  assert float(jnp.max(jnp.abs(du))) > 1e-2
  np.testing.assert_allclose(du, fd, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(du))))
  np.testing.assert_allclose(u, network(x, t, d), rtol=1e-5, atol=1e-6)


def test_sampler_uses_the_objective_step():
  from shortcut_jax import sampling
  import dataclasses
  model = go.shortcut_oracle(M, S)
  x0 = jnp.asarray(np.random.default_rng(4).normal(size=(3,) + M.shape), jnp.float32)
  mf = objectives.get_objective("meanflow")
  # MeanFlow's jump on the dyadic schedule is the shortcut step: the exact average velocity
  # lands on the exact ODE solution in any number of steps.
  for n in (1, 3):
    out = sampling.sample(model, {}, x0, {}, num_steps=n, denoise_timesteps=8, objective=mf)
    np.testing.assert_allclose(out, go.ode_solution(x0, 0.0, 1.0, M, S, jnp), rtol=1e-4,
                               atol=1e-4)
  doubled = dataclasses.replace(mf, sampler_step=lambda p, x, t, d, lv: x + 2 * d * p(x, t, lv))
  out = sampling.sample(model, {}, x0, {}, num_steps=1, denoise_timesteps=8, objective=doubled)
  np.testing.assert_allclose(out, x0 + 2 * go.shortcut_velocity(x0, jnp.zeros(3), jnp.ones(3),
                                                                 M, S, jnp), rtol=1e-5, atol=1e-5)


def test_adaptive_loss():
  pred = jnp.asarray([[1.0, 1.0], [0.0, 2.0]])
  tg = objectives.TrainingTargets(x=None, t=None, level=None, cond={}, target=jnp.zeros((2, 2)),
                                  groups={}, metrics={})
  loss, metrics = meanflow.adaptive_loss(pred, tg, {"meanflow_adaptive_p": 1.0,
                                                    "meanflow_adaptive_c": 1.0})
  np.testing.assert_allclose(loss, [1.0 / 2.0, 2.0 / 3.0], rtol=1e-6)
  np.testing.assert_allclose(metrics["mse"], 1.5)
  # The weight is a constant: the gradient is the plain MSE's gradient times the weight.
  grad = jax.grad(lambda p: jnp.sum(meanflow.adaptive_loss(p, tg, {"meanflow_adaptive_c": 1.0})[0]))
  np.testing.assert_allclose(grad(pred), [[0.5, 0.5], [0.0, 2.0 / 3.0]], rtol=1e-6)
  plain, _ = meanflow.adaptive_loss(pred, tg, {"meanflow_adaptive_p": 0.0})
  np.testing.assert_allclose(plain, [1.0, 2.0])


def test_times_follow_the_configured_share():
  st = meanflow.MeanFlowSettings.from_config({"meanflow_equal_share": 0.5})
  t, d = meanflow.sample_times(jax.random.PRNGKey(0), 1000, st)
  assert int(jnp.sum(d == 0)) == 500 and bool(jnp.all(d[:500] > 0))
  assert bool(jnp.all((t >= 0) & (t + d <= 1)))


@pytest.mark.parametrize("mu,sigma", [(-0.4, 1.0), (0.7, 0.5)])
def test_times_have_the_exact_logit_normal_distribution(mu, sigma):
  """The paper's τ, r ~ logit-normal(μ, σ) (its τ = 1 is noise), mapped to this library's
  convention (t = 0 noise, t = 1 data) as start t = 1 - max(τ, r) and end e = t + d = 1 - min.

  With F(x) = Φ((logit x - μ) / σ): P(t <= s) = 1 - F(1 - s)², and for the rows with r < τ
  P(e <= s) = (1 - F(1 - s))². A sign error in μ (or in the mapping) moves these CDFs by far
  more than the tolerance (at μ = -0.4, s = 0.5: 0.571 against 0.881 for μ = +0.4)."""
  from scipy.stats import norm
  n = 20000
  st = meanflow.MeanFlowSettings.from_config(
      {"meanflow_time_mu": mu, "meanflow_time_sigma": sigma, "meanflow_equal_share": 0.5})
  t, d = (np.asarray(a, np.float64) for a in meanflow.sample_times(jax.random.PRNGKey(1), n, st))
  end = (t + d)[d > 0]
  tau_cdf = lambda x: norm.cdf((np.log(x / (1 - x)) - mu) / sigma)  # F, the paper's times
  s = np.asarray([0.1, 0.3, 0.5, 0.7, 0.9])
  # ~5 standard errors of an empirical CDF at n = 10,000 rows.
  np.testing.assert_allclose([np.mean(t <= x) for x in s], 1 - tau_cdf(1 - s) ** 2, atol=0.025)
  np.testing.assert_allclose([np.mean(end <= x) for x in s], (1 - tau_cdf(1 - s)) ** 2,
                             atol=0.025)


def test_negative_mu_favours_data():
  """Relative to μ = 0, the paper's μ = -0.4 moves both times towards data (t = 1 here)."""
  def times(mu):
    st = meanflow.MeanFlowSettings.from_config({"meanflow_time_mu": mu,
                                                "meanflow_equal_share": 0.0})
    t, d = meanflow.sample_times(jax.random.PRNGKey(2), 20000, st)
    return float(jnp.mean(t)), float(jnp.mean(t + d))
  (start, end), (start0, end0) = times(-0.4), times(0.0)
  assert start > start0 + 0.03 and end > end0 + 0.03


def test_config_checks():
  c = digits_configs.digits_config(objective__name="meanflow")
  config_lib.validate(c)
  for impl in ("cudnn", "auto"):
    bad = digits_configs.digits_config(objective__name="meanflow", model__attention_impl=impl)
    with pytest.raises(ValueError, match="jvp"):
      config_lib.validate(bad)
  config_lib.validate(digits_configs.digits_config(model__attention_impl="cudnn"))
  with pytest.raises(ValueError, match="objective.meanflow_equal_share"):
    config_lib.validate(digits_configs.digits_config(objective__meanflow_equal_share=1.5))
  with pytest.raises(ValueError, match="objective.path"):
    config_lib.validate(digits_configs.digits_config(objective__path="spline"))


@pytest.mark.slow
def test_smoke_run_trains_and_samples(tmp_path, tmp_path_factory, monkeypatch):
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  import run_checks
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  c = importlib_config("smoke")
  c.data.data_dir = data_dir
  c.checkpoint.async_save = False
  for name in c.evals:
    c.evals[name].every = 0
  c.max_steps = 4
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  for key in ("train/loss", "train/mse", "train/loss_average", "train/loss_instant"):
    assert np.isfinite(metrics[key])
  _, state, step = experiment.restore_experiment(str(tmp_path / "run"))
  assert step == 4 and state.objective_state == {}
  # No state of its own: resuming is the trainer's (tests/test_trainer.py), not retested here.
  run_checks.assert_samples(tmp_path / "run", (16, 16, 1), fingerprint="digits_meanflow 4 steps")


def importlib_config(arg):
  import importlib
  c = importlib.import_module("configs.digits_meanflow").get_config(arg)
  c.unlock()
  assert c.objective.name == "meanflow"
  return c
