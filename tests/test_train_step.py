"""Tests of the train state, optimizer schedule, EMA, and the jitted train / eval steps."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from shortcut_jax import objectives
from shortcut_jax.train import train_state as ts
from shortcut_jax.train import train_step as tstep
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives.base import TrainingTargets

SHAPE = (4, 4, 1)
NUM_CLASSES = 10


pytestmark = pytest.mark.usefixtures("fast_compile")


def optim_config(**overrides):
  c = dict(lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.1, warmup_steps=0, schedule="constant",
           ema_rate=0.5)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def objective_config(name, **overrides):
  c = dict(name=name, denoise_timesteps=8, bootstrap_every=4, bootstrap_ema=True,
           bootstrap_dt_bias=0, bootstrap_cfg=True, cfg_scale=1.5, class_dropout_prob=0.1,
           faithful=False)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def make_batch(batch_size=16, seed=0):
  rng = np.random.default_rng(seed)
  images = np.tanh(rng.normal(size=(batch_size, *SHAPE)) + np.linspace(-1, 1, 16).reshape(SHAPE))
  return {"image": jnp.asarray(images, jnp.float32),
          "label": jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size), jnp.int32)}


def to_numpy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


@functools.lru_cache(maxsize=None)
def _tiny_dit(uses_level):
  module = dit_lib.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
                       out_channels=SHAPE[-1], class_dropout_prob=0.1, num_classes=NUM_CLASSES,
                       ignore_dt=not uses_level, dtype=jnp.float32)
  params = dit_lib.init_params(module, jax.random.PRNGKey(0), SHAPE)
  return dit_lib.velocity_model(module), to_numpy(params)


def tiny_dit(uses_level):
  """(model, fresh params): fresh device arrays, since train steps donate the state."""
  model, params = _tiny_dit(uses_level)
  return model, jax.tree.map(jnp.asarray, params)


# ------------------------------------------------------------------------- schedule, EMA, state


def test_constant_schedule_with_warmup():
  _, sched = ts.make_optimizer(optim_config(lr=1e-3, warmup_steps=10), max_steps=100)
  for step, want in ((0, 0.0), (5, 5e-4), (10, 1e-3), (57, 1e-3), (1000, 1e-3)):
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6, atol=1e-12)
  _, sched = ts.make_optimizer(optim_config(lr=2e-4), max_steps=100)
  assert float(sched(0)) == pytest.approx(2e-4) and float(sched(99)) == pytest.approx(2e-4)


def test_cosine_schedule():
  lr, warmup, total = 1e-3, 10, 110
  _, sched = ts.make_optimizer(optim_config(lr=lr, warmup_steps=warmup, schedule="cosine"), total)
  for step in (0, 4, 10, 35, 60, 100, 110):
    if step < warmup:
      want = lr * step / warmup
    else:
      want = 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-10)
  with pytest.raises(ValueError):
    ts.make_optimizer(optim_config(schedule="linear"), 10)


def test_ema_update_matches_numpy():
  rng = np.random.default_rng(0)
  ema = {"a": rng.normal(size=(3, 2)).astype(np.float32), "b": {"c": np.float32(2.0)}}
  params = {"a": rng.normal(size=(3, 2)).astype(np.float32), "b": {"c": np.float32(-1.0)}}
  out = ts.ema_update(jax.tree.map(jnp.asarray, ema), jax.tree.map(jnp.asarray, params), 0.9)
  np.testing.assert_allclose(out["a"], 0.9 * ema["a"] + 0.1 * params["a"], rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 0.9 * 2.0 + 0.1 * -1.0, rtol=1e-6)


def test_create_train_state():
  tx, _ = ts.make_optimizer(optim_config(), 10)
  params = {"w": jnp.ones((2, 2))}
  state = ts.create_train_state(params, tx, jax.random.PRNGKey(1))
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  np.testing.assert_array_equal(state.ema_params["w"], params["w"])
  assert state.ema_params["w"] is not params["w"]
  assert len(jax.tree.leaves(state)) >= 4  # A pytree (jit/donation/checkpointing need that).


# ----------------------------------------------------------------------------------- train step


def test_train_step_reduces_loss_on_a_fixed_batch():
  model, params = tiny_dit(False)
  objective = objectives.get_objective("naive")
  tx, sched = ts.make_optimizer(optim_config(lr=1e-2, weight_decay=0.0), 100)
  ocfg = objective_config("naive", class_dropout_prob=0.0)
  step = tstep.make_train_step(model, objective, tx, sched, ocfg, 0.9)
  evaluate = jax.jit(functools.partial(tstep.eval_step, model=model, objective=objective,
                                       objective_config=ocfg, use_ema=False))
  batch = make_batch(32)
  state = ts.create_train_state(params, tx, jax.random.PRNGKey(0))
  # Several fixed draws (t, x0) so the comparison measures the model, not the draw.
  keys = jax.random.split(jax.random.PRNGKey(123), 4)
  before = np.mean([float(evaluate(state, batch, k)["train/loss"]) for k in keys])
  for _ in range(30):
    state, metrics = step(state, batch)
  after = np.mean([float(evaluate(state, batch, k)["train/loss"]) for k in keys])
  assert int(state.step) == 30
  assert np.isfinite(float(metrics["train/loss"]))
  assert after < 0.8 * before, (before, after)


def test_train_step_metrics_update_and_ema():
  model, params = tiny_dit(True)
  objective = objectives.get_objective("shortcut")
  tx, sched = ts.make_optimizer(optim_config(lr=1e-3, warmup_steps=4), 100)
  ocfg = objective_config("shortcut")
  ema_rate = 0.75
  step = tstep.make_train_step(model, objective, tx, sched, ocfg, ema_rate)
  batch = make_batch(16)
  state = ts.create_train_state(params, tx, jax.random.PRNGKey(5))
  state, _ = step(state, batch)  # Step 0 has lr 0; take one so the checks below see an update.
  old = to_numpy(state)
  new, metrics = step(state, batch)

  expected_keys = {"train/loss", "train/loss_flow", "train/loss_bootstrap", "train/grad_norm",
                   "train/param_norm", "train/update_norm", "train/lr", "train/dropped_ratio",
                   "train/bootstrap_ratio", "train/v_magnitude_bootstrap", "train/v_magnitude_b1",
                   "train/v_magnitude_b2"}
  assert expected_keys <= set(metrics), set(metrics) ^ expected_keys
  for k, v in metrics.items():
    assert v.shape == () and v.dtype == jnp.float32, k
  assert int(new.step) == 2
  np.testing.assert_array_equal(np.asarray(jax.random.key_data(new.rng)),
                                np.asarray(jax.random.key_data(old.rng)))
  assert float(metrics["train/lr"]) == pytest.approx(1e-3 * 1 / 4)

  new_p, old_p = jax.tree.leaves(to_numpy(new.params)), jax.tree.leaves(old.params)
  norm = lambda leaves: math.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64)))
                                      for x in leaves))
  assert float(metrics["train/param_norm"]) == pytest.approx(norm(new_p), rel=1e-5)
  assert float(metrics["train/update_norm"]) == pytest.approx(
      norm([a - b for a, b in zip(new_p, old_p)]), rel=1e-3)
  assert float(metrics["train/update_norm"]) > 0
  for e_new, e_old, p_new in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(old.ema_params),
                                 new_p):
    np.testing.assert_allclose(e_new, ema_rate * e_old + (1 - ema_rate) * p_new, rtol=1e-5,
                               atol=1e-7)

  # The logged losses equal an independent computation from the same targets and weights.
  step_key = jax.random.fold_in(jnp.asarray(old.rng), 1)  # Raw uint32 key, step 1.
  targets_key = jax.random.split(step_key)[0]

  @jax.jit
  def forward(params, ema_params):
    tg = objective.targets_fn(model, params, ema_params, batch, targets_key, ocfg)
    return model(params, tg.x, tg.t, tg.level, tg.cond), tg.target

  pred, target = forward(old.params, old.ema_params)
  pred = np.asarray(pred, np.float64)
  per = np.mean((pred - np.asarray(target, np.float64)) ** 2, axis=(1, 2, 3))
  boot = np.arange(16) % 4 == 0  # The default layout's bootstrap rows: every 4th.
  assert float(metrics["train/loss"]) == pytest.approx(per.mean(), rel=1e-4)
  assert float(metrics["train/loss_bootstrap"]) == pytest.approx(per[boot].mean(), rel=1e-4)
  assert float(metrics["train/loss_flow"]) == pytest.approx(per[~boot].mean(), rel=1e-4)


def _key_probe_objective(model, params, ema_params, batch, rng, config):
  """Flow targets plus a metric that reveals which key the objective got."""
  tg = objectives.get_objective("naive").targets_fn(model, params, ema_params, batch, rng, config)
  return tg._replace(metrics=dict(tg.metrics, key_probe=jax.random.uniform(rng)))


def _linear_model():
  def apply_fn(params, x, t, level, cond, train, rngs):
    return params["w"] * x + params["b"]
  return VelocityModel(apply_fn=apply_fn, num_classes=NUM_CLASSES)


def test_step_key_depends_only_on_the_step():
  model = _linear_model()
  tx, sched = ts.make_optimizer(optim_config(), 100)
  ocfg = objective_config("naive")
  step = tstep.make_train_step(model, _key_probe_objective, tx, sched, ocfg, 0.9, donate=False)
  batch = make_batch(8)
  base = jax.random.PRNGKey(7)
  params = {"w": jnp.float32(0.5), "b": jnp.float32(0.0)}
  state = ts.create_train_state(params, tx, base)
  probes = []
  for _ in range(3):
    state, metrics = step(state, batch)
    probes.append(float(metrics["train/key_probe"]))
  # A fresh state that jumps straight to step 2 (other weights) draws the same key.
  other = ts.create_train_state({"w": jnp.float32(-3.0), "b": jnp.float32(1.0)}, tx, base)
  other = other.replace(step=jnp.asarray(2, jnp.int32))
  _, metrics = step(other, batch)
  assert float(metrics["train/key_probe"]) == probes[2]
  for s, probe in enumerate(probes):
    key = jax.random.split(jax.random.fold_in(base, s))[0]
    assert probe == float(jax.random.uniform(key))
  assert len(set(probes)) == 3


def test_eval_step_ema_flag_and_no_update():
  model = _linear_model()
  tx, _ = ts.make_optimizer(optim_config(), 100)
  ocfg = objective_config("naive")
  state = ts.create_train_state({"w": jnp.float32(0.0), "b": jnp.float32(0.0)}, tx,
                                jax.random.PRNGKey(0))
  state = state.replace(ema_params={"w": jnp.float32(1.0), "b": jnp.float32(0.0)})
  batch = make_batch(8)
  # The way evaluators call it: jitted with the flag passed as a (traced) keyword.
  evaluate = jax.jit(functools.partial(tstep.eval_step, model=model,
                                       objective=objectives.get_objective("naive"),
                                       objective_config=ocfg))
  online = evaluate(state, batch, use_ema=False)
  ema = evaluate(state, batch, use_ema=True)
  # Online weights predict 0, so the loss is the mean squared target; EMA predicts x.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0), 0x5EED)
  tg = objectives.get_objective("naive").targets_fn(model, {}, {}, batch, key, ocfg)
  target, x = np.asarray(tg.target, np.float64), np.asarray(tg.x, np.float64)
  assert float(online["train/loss"]) == pytest.approx(np.mean(target ** 2), rel=1e-5)
  assert float(ema["train/loss"]) == pytest.approx(np.mean((x - target) ** 2), rel=1e-5)
  assert int(state.step) == 0


def test_training_targets_type_is_the_contract():
  model, params = tiny_dit(True)
  fn = functools.partial(objectives.get_objective("shortcut").targets_fn, model,
                         config=objective_config("shortcut"))
  tg = jax.jit(fn)(params, params, make_batch(16), jax.random.PRNGKey(0))
  assert isinstance(tg, TrainingTargets)
  assert tg.level.dtype == jnp.int32 and tg.t.dtype == jnp.float32
  assert tg.x.shape == tg.target.shape == (16, *SHAPE)
