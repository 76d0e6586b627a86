"""sOT (`data.ot_coupling`): the assignment is the optimal one (against brute force on a small
pool), the matched noise is closer to the images, a stream resumed mid-group gives the same
noise as one that never stopped, the objectives start from the batch's noise, and the options
that cannot work are config errors."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from digits_configs import digits_config
from shortcut_jax import config as config_lib
from shortcut_jax import objectives
from shortcut_jax.data import ot_coupling
from shortcut_jax.models.velocity_model import VelocityModel


def test_assignment_is_optimal_against_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(5):
    x, e = rng.normal(size=(6, 3, 2)), rng.normal(size=(6, 3, 2))
    cost = lambda p: sum(np.sum((x[i] - e[p[i]]) ** 2) for i in range(6))
    best = min(itertools.permutations(range(6)), key=cost)
    perm = ot_coupling.assign(x, e)
    assert sorted(perm) == list(range(6))
    assert cost(perm) == pytest.approx(cost(best), rel=1e-12)


def test_assignment_within_classes_is_optimal_against_brute_force():
  # Each row's noise comes from its own class's rows, and no permutation that keeps the
  # classes apart costs less.
  rng = np.random.default_rng(1)
  groups = np.array([2, 0, 2, 1, 0, 2, 0])
  for _ in range(3):
    x, e = rng.normal(size=(7, 2, 2)), rng.normal(size=(7, 2, 2))
    cost = lambda p: sum(np.sum((x[i] - e[p[i]]) ** 2) for i in range(7))
    keeps = [p for p in itertools.permutations(range(7))
             if all(groups[p[i]] == groups[i] for i in range(7))]
    best = min(keeps, key=cost)
    perm = ot_coupling.assign(x, e, groups)
    assert sorted(perm) == list(range(7))
    np.testing.assert_array_equal(groups[perm], groups)
    assert cost(perm) == pytest.approx(cost(best), rel=1e-12)
    # The label-blind optimum, over more permutations, is at least as cheap.
    assert cost(ot_coupling.assign(x, e)) <= cost(perm) + 1e-12
  with pytest.raises(ValueError, match="3 labels for 7 rows"):
    ot_coupling.assign(x, e, groups[:3])


def test_the_stream_matches_within_each_class():
  # Three classes mixed within every batch, so matching within batches would not pass.
  def mixed(step=0):
    while True:
      rng = np.random.default_rng(step)
      yield {"image": rng.normal(size=(6, 2, 2, 1)).astype(np.float32),
             "label": rng.permutation(np.arange(6) % 3)}
      step += 1
  pool = 4
  it = ot_coupling.coupled_batches(mixed(), pool=pool, seed=3, start_step=0, by_class=True)
  group = [next(it) for _ in range(pool)]
  x = np.concatenate([b["image"] for b in group])
  e = np.concatenate([b["noise"] for b in group])
  labels = np.concatenate([b["label"] for b in group])
  draw = np.random.default_rng([3, 0, 0, 0x5071]).standard_normal(x.shape).astype(np.float32)
  for c in np.unique(labels):  # Each class's noise is its own rows' draw, reordered.
    rows = labels == c
    np.testing.assert_array_equal(np.sort(e[rows].ravel()), np.sort(draw[rows].ravel()))
  assert np.sum((x - e) ** 2) < np.sum((x - draw) ** 2)


def test_matching_within_classes_needs_labels():
  unlabelled = ({"image": b["image"]} for b in _stream(0))
  it = ot_coupling.coupled_batches(unlabelled, pool=2, seed=0, start_step=0, by_class=True)
  with pytest.raises(ValueError, match="ot_within_class.*none"):
    next(it)


def _stream(start):
  """A deterministic batch stream from step `start` (the pipeline's resumption contract)."""
  step = start
  while True:
    rng = np.random.default_rng(step)
    yield {"image": rng.normal(size=(4, 2, 2, 1)).astype(np.float32), "label": np.full(4, step)}
    step += 1


def _coupled(start, pool=4, steps=9):
  it = ot_coupling.coupled_batches(_stream(ot_coupling.group_start(start, pool)), pool=pool,
                                   seed=3, start_step=start)
  return [next(it) for _ in range(steps)]


def test_a_resumed_stream_gets_the_same_noise():
  straight = _coupled(0, steps=12)
  for start in (3, 4, 6):
    resumed = _coupled(start)
    for a, b in zip(straight[start:], resumed):
      np.testing.assert_array_equal(a["label"], b["label"])
      np.testing.assert_array_equal(a["noise"], b["noise"])
  # Matched: closer than the same noise unmatched, and a permutation of the group's draw.
  group = straight[:4]
  x = np.concatenate([b["image"] for b in group])
  e = np.concatenate([b["noise"] for b in group])
  draw = np.random.default_rng([3, 0, 0, 0x5071]).standard_normal(x.shape).astype(np.float32)
  np.testing.assert_array_equal(np.sort(e.ravel()), np.sort(draw.ravel()))
  assert np.sum((x - e) ** 2) < np.sum((x - draw) ** 2)


def test_the_matching_thread_ends_with_its_consumer():
  import threading
  import time
  it = ot_coupling.coupled_batches(_stream(0), pool=2, seed=0, start_step=0)
  next(it)
  time.sleep(0.3)  # The thread has filled the queue and waits on it.
  assert any(t.name == "ot_coupling" and t.is_alive() for t in threading.enumerate())
  it.close()
  deadline = time.time() + 5
  while any(t.name == "ot_coupling" for t in threading.enumerate()) and time.time() < deadline:
    time.sleep(0.05)
  assert not any(t.name == "ot_coupling" for t in threading.enumerate())


@pytest.mark.parametrize("name", ["naive", "shortcut"])
def test_objectives_start_from_the_batch_noise(name):
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 2, 2, 1)), jnp.float32),
           "label": jnp.zeros(16, jnp.int32),
           "noise": jnp.asarray(rng.normal(size=(16, 2, 2, 1)), jnp.float32)}
  model = VelocityModel(apply_fn=lambda p, x, t, level, cond, train, rngs: jnp.zeros_like(x),
                        num_classes=10)
  config = ml_collections.ConfigDict(dict(denoise_timesteps=8, bootstrap_every=4, cfg_scale=1.5,
                                          class_dropout_prob=0.1))
  tg = objectives.get_objective(name).targets(model, {}, {}, batch, jax.random.PRNGKey(0), config)
  a = 1 - 1e-5
  t = np.asarray(tg.t).reshape(-1, 1, 1, 1)
  want = (1 - a * t) * np.asarray(batch["noise"]) + t * np.asarray(batch["image"])
  np.testing.assert_allclose(np.asarray(tg.x), want, rtol=1e-5, atol=1e-6)  # rows in place


@pytest.mark.parametrize("changes,message", [
    (dict(objective__ot_pool=-1), "objective.ot_pool"),
    (dict(objective__ot_pool=4, objective__name="meanflow"), "option of objectives 'shortcut'"),
    (dict(objective__ot_pool=4, objective__faithful=True), "objective.faithful=False"),
    (dict(objective__ot_within_class=True), "set objective.ot_pool > 0"),
    (dict(objective__ot_pool=4, objective__ot_within_class=True, data__num_classes=1),
     "needs class labels"),
])
def test_ot_options_that_cannot_work_are_config_errors(changes, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(digits_config(**changes))
