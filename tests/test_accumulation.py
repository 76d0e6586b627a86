"""Gradient accumulation (`optim.accumulate_steps`) and the model's matmul precision.

The accumulated step is compared with independent computations: the one-batch step for
objectives whose targets come first (the same update to float32 rounding), and the mean of the
microbatch gradients, computed here, for an objective with its own loss (MeanFlow). Plain SGD
makes the update the gradient itself, so a wrong scale or a missing microbatch shows.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import test_train_step as tts
from digits_configs import digits_config
from shortcut_jax import objectives
from shortcut_jax.models import registry
from shortcut_jax.train import accumulation
from shortcut_jax.train import train_state as ts
from shortcut_jax.train import train_step as tstep

pytestmark = pytest.mark.usefixtures("fast_compile")

LR = 0.5


def _sgd_step(model, objective, ocfg, k):
  return tstep.make_train_step(model, objective, optax.sgd(LR), lambda step: LR, ocfg, 0.5,
                               donate=False, accumulate_steps=k)


def _state(params, seed=3):
  return ts.create_train_state(params, optax.sgd(LR), jax.random.PRNGKey(seed))


def test_split_and_merge_put_every_row_back():
  rows = jnp.arange(12 * 2).reshape(12, 2)
  parts = accumulation.split({"r": rows}, 3)["r"]
  assert parts.shape == (3, 4, 2)
  for j in range(3):  # Microbatch j: rows j, j + 3, ... (each device's block holds some of each).
    np.testing.assert_array_equal(parts[j], rows[j::3])
  np.testing.assert_array_equal(accumulation.merge(parts), rows)
  np.testing.assert_allclose(accumulation.merge(jnp.array([1.0, 2.0, 6.0])), 3.0)
  with pytest.raises(ValueError, match="accumulate_steps=5"):
    accumulation.split(rows, 5)


def test_per_device_sums_give_the_same_gradient():
  """Reducing once (dp): blocks of rows per device summed apart, then reduced, equal the mean
  gradient of the whole batch; the per-row outputs come back in batch order."""
  rng = np.random.default_rng(0)
  w = {"a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.float32(0.5)}
  rows = {"x": jnp.asarray(rng.normal(size=(24, 3)), jnp.float32)}

  def per_row(p, x):
    return jnp.sum(jnp.tanh(x @ p["a"]) ** 2, axis=-1) + p["b"] * jnp.sum(x, axis=-1)

  def grad_fn(p, microbatch, index):
    loss = lambda q: jnp.mean(per_row(q, microbatch["x"]))
    return jax.grad(loss)(p), (per_row(p, microbatch["x"]), index.astype(jnp.float32))

  want = jax.grad(lambda q: jnp.mean(per_row(q, rows["x"])))(w)
  for k, groups in ((3, 1), (3, 4), (2, 6)):
    grads, (values, index) = accumulation.accumulate(grad_fn, w, rows, k, groups)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, want)
    np.testing.assert_allclose(values, per_row(w, rows["x"]), rtol=1e-6)
    # Every call got its own index: j * groups + g, averaged.
    np.testing.assert_allclose(index, (k * groups - 1) / 2)


@pytest.mark.parametrize("name,k", [("naive", 4), ("shortcut", 2)])
def test_accumulated_update_equals_one_batch(name, k):
  """Targets first: the same draws and teacher passes, only the trained pass is split."""
  model, params = tts.tiny_dit(name == "shortcut")
  objective = objectives.get_objective(name)
  ocfg = tts.objective_config(name)
  batch = tts.make_batch(16)
  one, one_metrics = _sgd_step(model, objective, ocfg, 1)(_state(params), batch)
  acc, acc_metrics = _sgd_step(model, objective, ocfg, k)(_state(params), batch)
  moved = jax.tree.map(lambda a, p: float(jnp.max(jnp.abs(a - p))), one.params, params)
  assert max(jax.tree.leaves(moved)) > 1e-3  # The update is not negligible.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               acc.params, one.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               acc.ema_params, one.ema_params)
  for key in one_metrics:
    if key.startswith("train/loss") or key == "train/grad_norm":
      np.testing.assert_allclose(acc_metrics[key], one_metrics[key], rtol=2e-5, err_msg=key)


def test_meanflow_accumulates_the_microbatch_gradients():
  """An objective with its own loss draws per microbatch: key `fold_in(targets_key, j)`."""
  model, params = tts.tiny_dit(True)
  objective = objectives.get_objective("meanflow")
  ocfg = tts.objective_config("meanflow", meanflow_time_mu=-0.4, meanflow_time_sigma=1.0,
                              meanflow_equal_share=0.5, meanflow_adaptive_p=1.0,
                              meanflow_adaptive_c=1e-3, path="linear", source="gaussian",
                              source_noise_step=0)
  batch, k = tts.make_batch(16), 2
  state = _state(params)
  new, metrics = _sgd_step(model, objective, ocfg, k)(state, batch)

  targets_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))

  def mean_loss(p, microbatch, j):
    per_sample, _, _ = objective.loss(
        model, p, state.ema_params, microbatch, jax.random.fold_in(targets_key, j), ocfg,
        step=state.step, state={}, dropout_rng=jax.random.fold_in(dropout_key, j))
    return jnp.mean(per_sample), per_sample

  grads, rows = [], np.zeros(16, np.float32)
  step = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))
  for j in range(k):
    microbatch = {name: v[j::k] for name, v in batch.items()}
    (_, per_sample), g = step(params, microbatch, j)
    grads.append(g)
    rows[j::k] = per_sample
  want = jax.tree.map(lambda p, *gs: p - LR * sum(gs) / k, params, *grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               new.params, want)
  np.testing.assert_allclose(metrics["train/loss"], rows.mean(), rtol=1e-5)


# --------------------------------------------------------------------------- matmul precision


def _dot_precisions(fn, *args):
  text = str(jax.make_jaxpr(fn)(*args))
  return {p for p in ("HIGHEST", "HIGH", "DEFAULT") if f"Precision.{p}," in text}


def test_matmul_precision_reaches_every_matmul_of_the_step():
  model, params = tts.tiny_dit(True)
  objective = objectives.get_objective("shortcut")
  ocfg = tts.objective_config("shortcut")
  batch = tts.make_batch(16)
  tx, sched = ts.make_optimizer(tts.optim_config(), 10)
  state = ts.create_train_state(params, tx, jax.random.PRNGKey(0))
  # 'default' keeps JAX's own setting (none, or an outer one: the tests run under 'highest').
  cases = ((None, "highest", {"HIGHEST"}), (None, "high", {"HIGH"}), (None, "default", set()),
           ("highest", "high", {"HIGH"}), ("highest", "default", {"HIGHEST"}))
  for outer, name, want in cases:
    m = dataclasses.replace(model, matmul_precision=name)
    step = functools.partial(tstep.train_step, model=m, objective=objective, tx=tx,
                             lr_schedule=sched, objective_config=ocfg, ema_rate=0.5)
    # Sampling and evaluation call the model, which applies it too.
    call = lambda p, x, m=m: m(p, x, jnp.zeros(2), jnp.zeros(2, jnp.int32),
                               {"label": jnp.zeros(2, jnp.int32)})
    with jax.default_matmul_precision(outer):
      assert _dot_precisions(step, state, batch) == want, (outer, name)
      assert _dot_precisions(call, params, batch["image"][:2]) == want, (outer, name)


def test_the_config_sets_the_models_precision():
  c = digits_config(model__matmul_precision="highest")
  objective = objectives.get_objective(c.objective.name)
  network = registry.build_network(c, {"image": (16, 16, 1)}, objective)
  assert network.model.matmul_precision == "highest"
