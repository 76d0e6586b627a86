"""HOMO: its flow targets against the closed-form smoothstep derivatives, the self-consistency
targets of an exact two-output model, the loss terms on known targets, the second-order sampler
on an exact model, both network layouts (u1's gradient into u2, the stop-gradient switch), the
config checks, and a smoke run that trains, reduces its loss, resumes exactly and samples."""

import functools
import importlib
import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from shortcut_jax import config as config_lib
from shortcut_jax import objectives, sampling
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import homo
from shortcut_jax.core.paths import get_path

# Dirac data: every x1 is the fixed image MU, so the flow from any x_t is known in closed form.
MU = np.asarray([[[0.5], [-0.3]], [[0.1], [0.8]]], np.float32)  # [2, 2, 1]
SMOOTH = get_path("smoothstep")


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def _f(t):
  return t * t * (3 - 2 * t)


def _exact_end(x, t, s):
  """Where the smoothstep flow of Dirac data at MU carries x from time t to time s:
  x_s = MU + (1 - f(s)) / (1 - f(t)) (x - MU)."""
  ratio = (1 - _f(s)) / (1 - _f(t))
  return MU + ratio.reshape((-1, 1, 1, 1)) * (x - MU)


def _exact_homo_model():
  """A two-output model whose jump x + d u1 + ½ d² u2 is the exact flow over d = 2^-level, with
  u1 the exact instantaneous velocity."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    del params, cond, train, rngs
    d = jnp.power(2.0, -jnp.asarray(level, jnp.float32))
    fp = 6 * t * (1 - t)
    v = (fp / (1 - _f(t))).reshape((-1, 1, 1, 1)) * (MU - x)
    end = _exact_end(x, t, jnp.minimum(t + d, 1.0))
    db = d.reshape((-1, 1, 1, 1))
    a = 2 * (end - x - db * v) / (db * db)
    return jnp.concatenate([v, a], axis=-1)
  return VelocityModel(apply_fn=apply_fn)


def _points(n=5, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n,) + MU.shape) * 0.5, jnp.float32)
  level = jnp.asarray(rng.integers(0, 4, n), jnp.int32)
  d = np.exp2(-np.asarray(level, np.float64))
  t = jnp.asarray(np.floor(rng.uniform(0, 1, n) / d) * d * 0.999, jnp.float32)
  return x, t, level


def test_flow_target_is_the_closed_form_smoothstep_derivatives():
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.normal(size=(4, 2, 2, 1)), jnp.float32)
  x1 = jnp.asarray(rng.normal(size=(4, 2, 2, 1)), jnp.float32)
  t = jnp.asarray([0.0, 0.25, 0.5, 0.9], jnp.float32)
  got = homo.flow_target(SMOOTH, x0, x1, t)
  tb = np.asarray(t).reshape(-1, 1, 1, 1)
  delta = np.asarray(x1 - x0)
  np.testing.assert_allclose(got[..., :1], 6 * tb * (1 - tb) * delta, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[..., 1:], (6 - 12 * tb) * delta, rtol=1e-5, atol=1e-5)


def test_self_consistency_targets_of_the_exact_model_reach_the_exact_end():
  model = _exact_homo_model()
  x, t, level = _points()
  target, _, _ = homo.second_order_bootstrap(model, {}, x, t, level, {})
  v, a = homo.split_output(target)
  d = jnp.power(2.0, -level.astype(jnp.float32)).reshape(-1, 1, 1, 1)
  jump = x + d * v + 0.5 * d * d * a
  want = _exact_end(x, t, t + jnp.power(2.0, -level.astype(jnp.float32)))
  np.testing.assert_allclose(jump, want, rtol=1e-4, atol=1e-4)
  # The velocity target is the mean of the two half-step velocities, so it differs from the
  # instantaneous velocity on this curved flow; a first-order target (no u2) misses the end.
  first_order = x + d * v
  assert float(jnp.max(jnp.abs(first_order - want))) > 1e-2
  # Without the acceleration term the u2 target is zero.
  target0, _, _ = homo.second_order_bootstrap(model, {}, x, t, level, {}, sc_acceleration=False)
  np.testing.assert_array_equal(homo.split_output(target0)[1], 0.0)
  np.testing.assert_allclose(homo.split_output(target0)[0], v, rtol=1e-6)


def test_taylor_sampler_lands_on_the_data_with_the_exact_model():
  model = _exact_homo_model()
  hm = objectives.get_objective("homo")
  x0 = jnp.asarray(np.random.default_rng(2).normal(size=(3,) + MU.shape), jnp.float32)
  for n in (1, 2, 4):
    out = sampling.sample(model, {}, x0, {}, num_steps=n, denoise_timesteps=8, objective=hm)
    np.testing.assert_allclose(out, np.broadcast_to(MU, out.shape), rtol=1e-4, atol=1e-4)
  # Euler on the velocity output alone does not (the objective's sampler step matters).
  euler = sampling.sample(VelocityModel(lambda *a: hm.velocity_of(model.apply_fn(*a))), {}, x0,
                          {}, num_steps=1, denoise_timesteps=8)
  assert float(jnp.max(jnp.abs(euler - MU))) > 1e-2


def test_loss_terms_on_known_targets():
  # Rows 0-1 self-consistency rows with velocity / acceleration errors 3 / 5 (squared 9 / 25),
  # rows 2-3 flow rows with errors 1 / 2 (squared 1 / 4): a swapped mask or a dropped weight
  # changes every number below.
  target = jnp.zeros((4, 2, 2, 2))
  err_v = jnp.asarray([3.0, 3.0, 1.0, 1.0]).reshape(4, 1, 1, 1)
  err_a = jnp.asarray([5.0, 5.0, 2.0, 2.0]).reshape(4, 1, 1, 1)
  pred = jnp.concatenate([jnp.broadcast_to(err_v, (4, 2, 2, 1)),
                          jnp.broadcast_to(err_a, (4, 2, 2, 1))], axis=-1)
  boot = jnp.asarray([1.0, 1.0, 0.0, 0.0])
  tg = objectives.TrainingTargets(x=None, t=None, level=None, cond={}, target=target,
                                  groups={"bootstrap": boot, "flow": 1 - boot}, metrics={})
  config = {"homo_lambda_v": 2.0, "homo_lambda_a": 0.5, "homo_lambda_sc": 0.1}
  loss, metrics = homo.homo_loss(pred, tg, config)
  np.testing.assert_allclose(loss, [0.1 * 34, 0.1 * 34, 2 * 1 + 0.5 * 4, 2 * 1 + 0.5 * 4],
                             rtol=1e-6)
  np.testing.assert_allclose([metrics["mse_velocity"], metrics["mse_acceleration"],
                              metrics["mse_sc_velocity"], metrics["mse_sc_acceleration"]],
                             [1, 4, 9, 25])
  loss, _ = homo.homo_loss(pred, tg, {**config, "homo_sc_acceleration": False})
  np.testing.assert_allclose(loss, [0.9, 0.9, 4.0, 4.0], rtol=1e-6)


def _experiment(**changes):
  from shortcut_jax import experiment
  import digits_configs
  c = importlib.import_module("configs.digits_homo").get_config("smoke")
  c.unlock()
  digits_configs.override(c, **changes)
  return experiment.build_experiment(c)


@functools.partial(jax.jit, static_argnums=1)
def _randomised(params, seed=1):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, l.shape)
                                   for k, l in zip(keys, leaves)])


@pytest.mark.parametrize("stop", [False, True])
def test_velocity_into_acceleration_gradient_switch(stop):
  exp = _experiment(model__acceleration="network", model__depth=1, model__hidden_size=32,
                    objective__homo_velocity_stop_grad=stop)
  params = _randomised(jax.jit(exp.network.init)(jax.random.PRNGKey(0)))
  assert set(params) == {"velocity", "acceleration"}
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2,) + exp.image_shape), jnp.float32)
  t, level = jnp.asarray([0.2, 0.6]), jnp.asarray([3, 1], jnp.int32)

  def acceleration_sum(p):
    return jnp.sum(homo.split_output(exp.model(p, x, t, level, {}))[1])
  grads = jax.jit(jax.grad(acceleration_sum))(params)  # One compile, not one per op.
  into_u1 = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["velocity"]))
  assert (into_u1 == 0.0) if stop else (into_u1 > 1e-4)
  # u2 sees u1's output: changing u1's weights changes the acceleration.
  other = {**params, "velocity": _randomised(params["velocity"], seed=7)}
  accel = jax.jit(lambda p: homo.split_output(exp.model(p, x, t, level, {}))[1])
  a1, a2 = accel(params), accel(other)
  assert float(jnp.max(jnp.abs(a1 - a2))) > 1e-4


def test_head_layout_is_one_dit_with_both_outputs():
  exp = _experiment(model__acceleration="head", model__depth=1, model__hidden_size=32)
  params = exp.network.init(jax.random.PRNGKey(0))
  assert "FinalLayer_0" in params
  x = jnp.zeros((2,) + exp.image_shape)
  out = exp.model(params, x, jnp.zeros(2), jnp.zeros(2, jnp.int32), {})
  assert out.shape == (2, *exp.image_shape[:-1], 2 * exp.image_shape[-1])


def test_config_checks_and_linear_path_warning(monkeypatch):
  import digits_configs
  c = digits_configs.digits_config(objective__name="homo", model__prediction="data")
  with pytest.raises(ValueError, match="model.prediction"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="model.acceleration"):
    config_lib.validate(digits_configs.digits_config(model__acceleration="third"))
  with pytest.raises(ValueError, match="homo_lambda_a"):
    config_lib.validate(digits_configs.digits_config(objective__homo_lambda_a=-1.0))
  with pytest.raises(ValueError, match="bootstrap_every"):
    config_lib.validate(digits_configs.digits_config(objective__name="homo", batch_size=60))
  warned = []
  from shortcut_jax.config import validation as config_validation
  monkeypatch.setattr(config_validation.logging, "warning",
                      lambda msg, *a: warned.append(msg % a if a else msg))
  for path in ("smoothstep", "linear"):
    warned.clear()
    config_lib.validate(digits_configs.digits_config(objective__name="homo", objective__path=path))
    assert any("linear path" in w for w in warned) == (path == "linear")
  warned.clear()
  config_lib.validate(digits_configs.digits_config(objective__name="shortcut"))
  assert not warned  # only objectives that need a curved path warn


@pytest.mark.slow
def test_smoke_run_logs_and_samples(tmp_path, tmp_path_factory):
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  import digits_configs
  import run_checks
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  c = digits_configs.quick_run_config("digits_homo", data_dir, 4)
  c.evals.loss_per_t.every = 4  # scores the velocity output on the smoothstep path
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  for key in ("train/loss", "train/loss_flow", "train/loss_bootstrap", "train/mse_velocity",
              "train/mse_acceleration", "train/mse_sc_velocity"):
    assert np.isfinite(metrics[key]), key
  assert os.path.exists(tmp_path / "run" / "plots" / "loss_per_t_4.png")
  assert experiment.restore_experiment(str(tmp_path / "run"))[1].objective_state == {}
  # No state of its own: resuming is the trainer's (tests/test_trainer.py), not retested here.
  run_checks.assert_samples(tmp_path / "run", (16, 16, 1), fingerprint="digits_homo 4 steps")


def test_training_reduces_the_loss_on_a_fixed_batch():
  from shortcut_jax.train import train_step as ts
  exp = _experiment(model__depth=1, model__hidden_size=32, optim__warmup_steps=0,
                    batch_size=16)
  c = exp.config
  state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
  step = ts.make_train_step(exp.model, exp.objective, exp.tx, exp.lr_schedule, c.objective,
                            c.optim.ema_rate, donate=False)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (16,) + exp.image_shape), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  eval_loss = jax.jit(lambda s: ts.eval_step(s, batch, jax.random.PRNGKey(5), model=exp.model,
                                             objective=exp.objective,
                                             objective_config=c.objective, use_ema=False))
  before = eval_loss(state)
  for _ in range(40):
    state, _ = step(state, batch)
  after = eval_loss(state)
  # Most of the initial loss is the irreducible variance of the targets given x_t.
  assert float(after["train/loss"]) < 0.9 * float(before["train/loss"])
  assert float(after["train/mse_acceleration"]) < 0.95 * float(before["train/mse_acceleration"])
