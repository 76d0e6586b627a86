"""The original's baselines (`progressive`, `consistency-distillation`, `consistency`,
`livereflow`): analytic fixed points on Gaussian data, the schedules against the original's
loop, the teacher (loading, checks, sharding, never trained), the samplers, and `:smoke` runs
that train, resume exactly and sample through `evaluation.run` (what eval.py calls)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import digits_configs
import gaussian_oracle as go
import run_checks
from shortcut_jax import config as config_lib
from shortcut_jax import experiment
from shortcut_jax.train import initialisation
from shortcut_jax import objectives
from shortcut_jax import sampling
from shortcut_jax.parallel import sharding as sharding_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import consistency, livereflow, progressive
from shortcut_jax.objectives import teacher as teacher_lib

A = 1.0 - 1e-5
SHAPE = (4, 4, 1)
NUM_CLASSES = 10
RNG = np.random.default_rng(7)
M_DATA = (0.3 * RNG.normal(size=SHAPE)).astype(np.float32)
S_DATA = RNG.uniform(0.2, 0.6, size=SHAPE).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def gaussian_batch(n, seed=0, labels=False):
  rng = np.random.default_rng(seed)
  batch = {"image": jnp.asarray(M_DATA[None] + S_DATA[None] * rng.normal(size=(n,) + SHAPE),
                                jnp.float32)}
  if labels:
    batch["label"] = jnp.asarray(rng.integers(0, NUM_CLASSES, n), jnp.int32)
  return batch


def oracle(fn, num_classes=0):
  """A `VelocityModel` computing `fn(x, t, level)` (params and conditioning ignored)."""
  return VelocityModel(apply_fn=lambda p, x, t, level, cond, train, rngs: fn(x, t, level),
                       num_classes=num_classes)


def exact_shortcut(x, t, level):
  """The exact average velocity over d = 2^-level (two exact half steps make one full one)."""
  return go.shortcut_velocity(x, t, jnp.power(2.0, -jnp.asarray(level, jnp.float32)), M_DATA,
                              S_DATA, jnp)


def instant_velocity(x, t, level=None):
  del level
  return go.flow_velocity(x, t, M_DATA, S_DATA, jnp)


def consistency_velocity(x, t, level=None):
  """The exact consistency function's velocity: (x(1) - x) / (1 - t) = s(x, t, 1 - t)."""
  del level
  return go.shortcut_velocity(x, t, 1.0 - t, M_DATA, S_DATA, jnp)


def targets_of(name):
  """The objective's target function, jitted per call with the model and config closed over."""
  fn = objectives.get_objective(name).targets_fn

  def call(model, params, ema_params, batch, rng, config, step=None, state=None):
    run = jax.jit(lambda p, e, b, r, s, st: fn(model, p, e, b, r, config, step=s, state=st))
    return run(params, ema_params, batch, rng, step, state)
  return call


def by_params(**models):
  """One `VelocityModel` that calls `models[name]` for params `{name: ...}` (teacher, target
  network and student are then told apart by their weights, as in training)."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    (name,) = params.keys()
    return models[name].apply_fn(params[name], x, t, level, cond, train, rngs)
  return VelocityModel(apply_fn=apply_fn)


# ------------------------------------------------------------------------- analytic fixed points


@pytest.mark.parametrize("faithful", [False, True])
def test_exact_consistency_function_is_a_fixed_point_of_distillation_targets(faithful):
  # The teacher's step lands on the exact ODE point (the exact shortcut over 1/M at level L),
  # and the target network is the exact consistency function: the target is that function's
  # own velocity at (x_t, t), even with big steps (M = 8).
  model = by_params(teacher=oracle(exact_shortcut), cf=oracle(consistency_velocity),
                    euler=oracle(instant_velocity))
  config = dict(denoise_timesteps=8, cfg_scale=0.0, class_dropout_prob=0.0, faithful=faithful)
  fn = targets_of("consistency-distillation")
  tg = fn(model, {"student": {}}, {"cf": {}}, gaussian_batch(64), jax.random.PRNGKey(1), config,
          state={"teacher": {"teacher": {}}})
  t = np.asarray(tg.t)
  np.testing.assert_array_equal(t * 8, np.round(t * 8))
  assert len(set(t.tolist())) >= 6
  np.testing.assert_array_equal(np.asarray(tg.level), 3)
  want = consistency_velocity(tg.x, tg.t)
  np.testing.assert_allclose(tg.target, want, rtol=2e-5, atol=2e-5)
  # Can fail: one Euler step of the exact velocity is not on the trajectory.
  tg = fn(model, {"student": {}}, {"cf": {}}, gaussian_batch(64), jax.random.PRNGKey(1), config,
          state={"teacher": {"euler": {}}})
  assert float(jnp.max(jnp.abs(tg.target - consistency_velocity(tg.x, tg.t)))) > 1e-2


def posterior_pairs(x_t, t, k, seed):
  """2k antithetic draws of (x0, x1) given x_t = (1 - a t) x0 + t x1 (x0 ~ N(0, 1), x1 ~
  N(m, s^2)): x1 = mean +- std z, so the average of any affine function of the pair is exact."""
  s2 = S_DATA.astype(np.float64) ** 2
  var_t = (1 - A * t) ** 2 + t ** 2 * s2
  mean = M_DATA + t * s2 / var_t * (x_t - t * M_DATA)
  std = np.sqrt(s2 - t ** 2 * s2 ** 2 / var_t)
  z = np.random.default_rng(seed).normal(size=(k,) + SHAPE)
  x1 = mean[None] + std[None] * np.concatenate([z, -z])
  x0 = (x_t[None] - t * x1) / (1 - A * t)
  return jnp.asarray(x0, jnp.float32), jnp.asarray(x1, jnp.float32)


@pytest.mark.parametrize("t_value", [0.0, 0.375, 0.75])
def test_exact_consistency_function_is_a_fixed_point_of_training_targets(t_value):
  # Consistency training steps along one (x0, x1) line instead of the ODE. For Gaussian data the
  # consistency function and the velocity are affine in x, so the training target averaged over
  # the pairs through x_t is exactly the distillation target with one Euler step of the exact
  # velocity; the exact consistency function is its fixed point up to the Euler step's O(d^2),
  # while a function that is not a consistency function misses by O(d).
  k = 8
  x_t = (t_value * M_DATA + 0.7 * np.random.default_rng(3).normal(size=SHAPE)).astype(np.float32)
  x0, x1 = posterior_pairs(x_t.astype(np.float64), t_value, k, seed=4)
  t = jnp.full((2 * k,), t_value, jnp.float32)
  level = jnp.zeros((2 * k,), jnp.int32)
  path = objectives.get_path("linear")
  residuals = {}
  for name, net in (("exact", consistency_velocity), ("instant", instant_velocity)):
    for d in (2.0 ** -4, 2.0 ** -5):
      xt, target, _ = consistency.training_pair_target(oracle(net), {}, x0, x1, t, t + d, level,
                                                       {}, path)
      np.testing.assert_allclose(xt, np.broadcast_to(x_t, xt.shape), atol=2e-5)
      mean_target = np.asarray(target, np.float64).mean(axis=0)
      cd_target, _, _ = consistency.distillation_step_target(
          by_params(teacher=oracle(instant_velocity), net=oracle(net)), {"teacher": {}},
          {"net": {}}, xt[:1], t[:1], jnp.full((1,), d, jnp.float32), level[:1], {})
      np.testing.assert_allclose(mean_target, np.asarray(cd_target)[0], rtol=1e-4, atol=1e-4)
      residuals[name, d] = np.abs(mean_target - np.asarray(net(xt[:1], t[:1]))[0]).max() / d
  # Residual per unit step: shrinks with d for the consistency function (second order), stays
  # put for the instantaneous velocity (first order).
  exact, instant = residuals["exact", 2.0 ** -5], residuals["instant", 2.0 ** -5]
  assert exact < 0.6 * residuals["exact", 2.0 ** -4] and exact < 0.1 * instant, residuals
  assert instant > 0.8 * residuals["instant", 2.0 ** -4], residuals


@pytest.mark.parametrize("phase", [0, 1, 2])
def test_perfectly_distilled_student_is_a_fixed_point_of_the_progressive_target(phase):
  # Teacher: exact steps of d/2; the perfectly distilled student (the teacher's two-step map) is
  # then the exact step of d = 2^-(L-1-phase): its output is the progressive target.
  fn = targets_of("progressive")
  config = dict(denoise_timesteps=8, schedule_steps=9, cfg_scale=0.0, class_dropout_prob=0.0)
  state = {"teacher": {}, "phase": jnp.int32(phase)}
  tg = fn(oracle(exact_shortcut), {}, {}, gaussian_batch(64), jax.random.PRNGKey(2), config,
          step=jnp.int32(3 * phase + 1), state=state)
  level = np.asarray(tg.level)
  np.testing.assert_array_equal(level, 2 - phase)
  grid = np.asarray(tg.t) * 2.0 ** (2 - phase)
  np.testing.assert_array_equal(grid, np.round(grid))
  student = exact_shortcut(tg.x, tg.t, tg.level)
  np.testing.assert_allclose(tg.target, student, rtol=2e-5, atol=2e-5)
  # Can fail: a teacher of Euler half steps has another two-step map.
  tg = fn(oracle(instant_velocity), {}, {}, gaussian_batch(64), jax.random.PRNGKey(2), config,
          step=jnp.int32(3 * phase + 1), state=state)
  assert float(jnp.max(jnp.abs(tg.target - exact_shortcut(tg.x, tg.t, tg.level)))) > 1e-2


def test_progressive_guides_the_first_phase_only():
  w = 2.5
  shift = lambda cond: jnp.where(cond["label"] == NUM_CLASSES, 0.0, 1.0 + cond["label"])

  def apply_fn(params, x, t, level, cond, train, rngs):
    return jnp.zeros_like(x) + shift(cond).reshape(-1, 1, 1, 1)
  model = VelocityModel(apply_fn=apply_fn, num_classes=NUM_CLASSES)
  fn = targets_of("progressive")
  config = dict(denoise_timesteps=8, schedule_steps=9, cfg_scale=w, class_dropout_prob=0.0,
                bootstrap_cfg=True)
  batch = gaussian_batch(16, labels=True)
  want_c = 1.0 + np.asarray(batch["label"], np.float32)
  for phase, weight in ((0, w), (1, 1.0), (2, 1.0)):
    tg = fn(model, {}, {}, batch, jax.random.PRNGKey(0), config, step=jnp.int32(0),
            state={"teacher": {}, "phase": jnp.int32(phase)})
    np.testing.assert_allclose(np.asarray(tg.target)[:, 0, 0, 0], weight * want_c, rtol=1e-6)


# --------------------------------------------------------------------------------- schedules


def _walk(update, config, num_steps):
  """Runs `update_state` for steps 0..num_steps-1 with params = step, EMA = 100 + step; returns
  the teacher after each step."""
  state = {"teacher": {"w": jnp.float32(-1.0)}, "phase": jnp.int32(0)}
  seen = []
  for s in range(num_steps):
    state = update(state, step=jnp.int32(s), params={"w": jnp.float32(s)},
                   ema_params={"w": jnp.float32(100 + s)}, config=config)
    seen.append(float(state["teacher"]["w"]))
  return seen, state


def test_progressive_refreshes_the_teacher_at_each_phase_boundary():
  config = dict(denoise_timesteps=8, schedule_steps=12)  # L = 3 phases of 4 steps.
  seen, state = _walk(progressive.update_progressive_state, config, 14)
  # The update of step s makes step s + 1; phases start at steps 4 and 8.
  assert seen == [-1.0] * 3 + [103.0] * 4 + [107.0] * 7
  assert int(state["phase"]) == 2
  seen, _ = _walk(progressive.update_progressive_state, dict(config, bootstrap_ema=False), 14)
  assert seen[3] == 3.0 and seen[7] == 7.0
  st = progressive.ProgressiveSettings.from_config(config)
  np.testing.assert_array_equal(progressive.phase_of_step(jnp.arange(14), st),
                                [0] * 4 + [1] * 4 + [2] * 6)


def test_progressive_faithful_follows_the_original_loop():
  # The original: `for i in range(2, max_steps + 2)`, update with train_state.step = i - 2, then
  # the teacher becomes the train state when i % (max_steps // L) == 0; targets use the phase
  # floor(step / (max_steps / L)).
  for max_steps in (12, 14):
    big_l, period = 3, max_steps // 3
    teacher, want = -1.0, []
    for i in range(2, max_steps + 2):
      step_after = i - 1
      if i % period == 0:
        teacher = 100.0 + (step_after - 1)
      want.append(teacher)
    config = dict(denoise_timesteps=8, schedule_steps=max_steps, faithful=True)
    seen, _ = _walk(progressive.update_progressive_state, config, max_steps)
    assert seen == want
    st = progressive.ProgressiveSettings.from_config(config)
    phases = [int(np.floor(s / (max_steps / big_l))) for s in range(max_steps)]
    np.testing.assert_array_equal(progressive.faithful_phase(jnp.arange(max_steps), st), phases)
  # The flaw kept: with 14 steps the teacher is refreshed at step 4 but phase 1 starts at 5.
  assert want[3] != -1.0 and phases[4] == 0


def test_consistency_training_n_schedule():
  config = dict(denoise_timesteps=8, schedule_steps=9)
  np.testing.assert_array_equal([int(consistency.training_phase(jnp.int32(s), config))
                                 for s in range(11)], [0] * 3 + [1] * 3 + [2] * 5)
  faithful = dict(config, faithful=True)  # The original's step counter starts at 1.
  np.testing.assert_array_equal([int(consistency.training_phase(jnp.int32(s), faithful))
                                 for s in range(4)], [0, 0, 1, 1])
  fn = targets_of("consistency")
  for step, n in ((0, 1), (4, 2), (7, 4)):
    tg = fn(oracle(consistency_velocity), {}, {}, gaussian_batch(64), jax.random.PRNGKey(0),
            dict(config, cfg_scale=0.0), step=jnp.int32(step))
    grid = np.asarray(tg.t) * n
    np.testing.assert_array_equal(grid, np.round(grid))
    assert set(np.round(grid).astype(int).tolist()) == set(range(n))
    np.testing.assert_array_equal(np.asarray(tg.level), int(np.log2(n)))
    # Phase 0 (N = 1): t = 0 to t' = 1, whose consistency function is x1 itself: the target is
    # the straight line to the data.
    if n == 1:
      x0 = np.asarray(tg.x)
      np.testing.assert_allclose(np.asarray(tg.target) + x0,
                                 np.asarray(gaussian_batch(64)["image"]) + 1e-5 * x0, atol=1e-5)


@pytest.mark.parametrize("name", ["progressive", "consistency-distillation", "consistency"])
def test_condition_dropout_unless_faithful(name):
  model = oracle(lambda x, t, level: jnp.zeros_like(x), num_classes=NUM_CLASSES)
  fn = targets_of(name)
  batch = gaussian_batch(32, labels=True)
  state = {"teacher": {}, "phase": jnp.int32(0)}
  base = dict(denoise_timesteps=8, schedule_steps=9, cfg_scale=1.5, class_dropout_prob=1.0)
  tg = fn(model, {}, {}, batch, jax.random.PRNGKey(0), base, step=jnp.int32(0), state=state)
  np.testing.assert_array_equal(np.asarray(tg.cond["label"]), NUM_CLASSES)
  tg = fn(model, {}, {}, batch, jax.random.PRNGKey(0), dict(base, faithful=True),
          step=jnp.int32(0), state=state)
  labels = np.asarray(tg.cond["label"])
  assert sorted(labels.tolist()) == sorted(np.asarray(batch["label"]).tolist())
  assert not np.array_equal(labels, np.asarray(batch["label"]))  # The faithful shuffle.
  # No dropout: only cfg_scale = 0 can null the labels here.
  tg = fn(model, {}, {}, batch, jax.random.PRNGKey(0),
          dict(base, cfg_scale=0.0, class_dropout_prob=0.0), step=jnp.int32(0), state=state)
  np.testing.assert_array_equal(np.asarray(tg.cond["label"]), NUM_CLASSES)


# ---------------------------------------------------------------------------------- live reflow


@pytest.mark.parametrize("faithful", [False, True])
def test_livereflow_targets(faithful):
  b, b_r, m = 32, 4, 8
  batch = gaussian_batch(b, labels=True)
  config = dict(denoise_timesteps=m, bootstrap_every=8, cfg_scale=1.5, class_dropout_prob=0.0,
                faithful=faithful)
  tg = targets_of("livereflow")(
      oracle(instant_velocity, NUM_CLASSES), {}, {}, batch, jax.random.PRNGKey(5), config)
  x, t, v = (np.asarray(a, np.float64) for a in (tg.x, tg.t, tg.target))
  np.testing.assert_array_equal(np.asarray(tg.level), [0] * b_r + [3] * (b - b_r))
  np.testing.assert_array_equal(tg.groups["reflow"], np.arange(b) < b_r)
  np.testing.assert_array_equal(t * m, np.round(t * m))
  tb = t[:, None, None, None]
  # Reflow rows: x_t on the line from x0 to an 8-step Euler rollout of the model from x0.
  # x_t = (1 - a t) x0 + t (x0 + v) = x0 + (1 - a) t x0 + t v  =>  x0 = (x_t - t v) / (1 + 1e-5 t)
  x0_r = (x[:b_r] - tb[:b_r] * v[:b_r]) / (1 + (1 - A) * tb[:b_r])
  y = x0_r.copy()
  for i in range(8):
    y = y + go.flow_velocity(y, np.full(b_r, i / 8), M_DATA.astype(np.float64),
                             S_DATA.astype(np.float64)) / 8
  np.testing.assert_allclose(v[:b_r], y - x0_r, atol=2e-5)
  # Flow rows: x_t = (1 - a t) x0 + t x1 and v = x1 - a x0, so x_t - t v = x0.
  x0_f = x[b_r:] - tb[b_r:] * v[b_r:]
  x1_f = v[b_r:] + A * x0_f
  images = np.asarray(batch["image"], np.float64)
  rows = [int(np.argmin(np.abs(images - r[None]).sum(axis=(1, 2, 3)))) for r in x1_f]
  np.testing.assert_allclose(x1_f, images[rows], atol=2e-5)
  if faithful:  # The original's key reuse: the reflow rows' noise and times are the flow's.
    np.testing.assert_allclose(x0_r, x0_f[:b_r], atol=2e-5)
    np.testing.assert_array_equal(t[:b_r], t[b_r:2 * b_r])
    assert len(set(rows)) == b - b_r
  else:  # Independent draws, and every image of rows b_r.. used once by the flow part.
    assert np.abs(x0_r - x0_f[:b_r]).max() > 0.1
    assert rows == list(range(b_r, b))
    # The reflow rows keep the labels of their rows.
    np.testing.assert_array_equal(np.asarray(tg.cond["label"])[:b_r],
                                  np.asarray(batch["label"])[:b_r])


def test_livereflow_rollout_is_guided():
  def apply_fn(params, x, t, level, cond, train, rngs):
    v = jnp.where(cond["label"] == NUM_CLASSES, 1.0, 3.0)
    return jnp.zeros_like(x) + v.reshape(-1, 1, 1, 1)
  model = VelocityModel(apply_fn=apply_fn, num_classes=NUM_CLASSES)
  x0 = jnp.zeros((2,) + SHAPE)
  cond = {"label": jnp.asarray([1, 2], jnp.int32)}
  out = livereflow.rollout(model, {}, x0, cond, 3, cfg_scale=2.0)
  np.testing.assert_allclose(out, 1.0 + 2.0 * (3.0 - 1.0))  # v_u + w (v_c - v_u) for 8 x 1/8.
  np.testing.assert_allclose(livereflow.rollout(model, {}, x0, cond, 3, cfg_scale=0.0), 3.0)


def test_livereflow_schedule():
  times, sizes, levels = livereflow.reflow_schedule(4, 8)
  np.testing.assert_allclose(times, [0, 0.25, 0.5, 0.75])
  np.testing.assert_allclose(sizes, 0.25)
  np.testing.assert_array_equal(levels, 0)
  np.testing.assert_array_equal(livereflow.reflow_schedule(8, 8)[2], 3)
  # The sampler follows it: level 0 below M steps, the flow level at M.
  seen = []

  def apply_fn(params, x, t, level, cond, train, rngs):
    jax.debug.callback(lambda lv: seen.append(int(lv[0])), level)
    return jnp.zeros_like(x)
  obj = objectives.get_objective("livereflow")
  for n in (2, 8):
    jax.block_until_ready(sampling.sample(VelocityModel(apply_fn=apply_fn), {},
                                          jnp.zeros((1,) + SHAPE), {}, num_steps=n,
                                          denoise_timesteps=8, objective=obj))
  assert seen == [0, 0] + [3] * 8


# ------------------------------------------------------------------------------------- samplers


def test_consistency_sampler_one_and_few_steps():
  obj = objectives.get_objective("consistency")
  model = oracle(consistency_velocity)
  n = 4096
  x0 = jax.random.normal(jax.random.PRNGKey(0), (n,) + SHAPE)
  keys = _image_keys(0, np.arange(n))
  run = lambda steps, x, k=keys: sampling.sample(
      model, {}, x, {}, num_steps=steps, denoise_timesteps=8, objective=obj, keys=k[:len(x)])
  one = run(1, x0)
  np.testing.assert_allclose(one, go.ode_solution(x0, 0.0, 1.0, M_DATA, S_DATA, jnp), rtol=1e-4,
                             atol=1e-4)
  few = run(4, x0)
  # With the exact consistency function every re-noised point is on the path's marginal, so the
  # few-step samples have the data's distribution too, but are other samples than one step's.
  for out in (one, few):
    np.testing.assert_allclose(np.mean(out, axis=0), M_DATA, atol=0.05)
    np.testing.assert_allclose(np.std(out, axis=0), S_DATA, rtol=0.1)
  assert float(jnp.mean(jnp.abs(few - one))) > 0.1
  # Deterministic given the start and the key, fresh noise per key (a row repeated with its key
  # is repeated, with another key it is another sample).
  rows = jnp.concatenate([x0[:2], x0[:1], x0[:1]], axis=0)
  twice = run(4, rows, jnp.concatenate([keys[:2], keys[:1], keys[5:6]]))
  np.testing.assert_array_equal(twice[0], twice[2])
  np.testing.assert_array_equal(twice[:2], few[:2])
  assert float(jnp.mean(jnp.abs(twice[3] - twice[0]))) > 0.1
  # The re-noising really draws noise: a step of 0.25 from t = 0 lands on 0.25 x1 + 0.75 eps
  # with eps standard normal and independent of x1 (0.25, not 0.5: swapped weights show).
  x = x0[:2048]
  x1 = consistency.consistency_fn(x, jnp.zeros(2048), consistency_velocity(x, jnp.zeros(2048)))
  mid = consistency.renoise_step(lambda xx, tt, lv: consistency_velocity(xx, tt), x,
                                 jnp.zeros(2048), jnp.float32(0.25), jnp.zeros(2048, jnp.int32),
                                 sampling.step_noise(keys[:2048], 0, SHAPE))
  eps = np.asarray((mid - 0.25 * x1) / 0.75).reshape(2048, -1)
  assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02
  assert abs(np.corrcoef(eps[:, 0], np.asarray(x1).reshape(2048, -1)[:, 0])[0, 1]) < 0.1
  assert abs(np.corrcoef(eps[:, 0], np.asarray(x).reshape(2048, -1)[:, 0])[0, 1]) < 0.1


def _image_keys(seed, idx):
  """Per-image keys as generation builds them: fold_in(PRNGKey(seed), i)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.asarray(idx))


def test_consistency_noise_comes_from_keys_not_from_the_sample():
  obj = objectives.get_objective("consistency")
  model = oracle(consistency_velocity)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (6,) + SHAPE)
  keys = _image_keys(0, np.arange(6))
  run = lambda x, k: sampling.sample(model, {}, x, {}, num_steps=4, denoise_timesteps=8,
                                     objective=obj, keys=k)
  out = run(x0, keys)
  # One ulp on every input value moves the samples by about an ulp (a noise hashed from the
  # sample's bits would change completely).
  nudged = run(jnp.nextafter(x0, jnp.inf), keys)
  assert bool(jnp.all(jnp.nextafter(x0, jnp.inf) != x0))  # the nudge is real
  np.testing.assert_allclose(nudged, out, rtol=0, atol=1e-5)
  # The step's noise is its argument: one ulp on x moves the step by at most ~an ulp.
  x, t = x0, jnp.full((6,), 0.25)
  eps = jax.random.normal(jax.random.PRNGKey(9), x.shape)
  step = lambda xx: consistency.renoise_step(lambda a, b, c: consistency_velocity(a, b), xx, t,
                                              jnp.float32(0.25), jnp.zeros(6, jnp.int32), eps)
  np.testing.assert_allclose(step(jnp.nextafter(x, jnp.inf)), step(x), rtol=0, atol=1e-5)
  # Other keys, other noise: rows whose key changed change, the others stay bit for bit.
  swapped = run(x0, keys.at[0].set(keys[1]))
  assert float(jnp.mean(jnp.abs(swapped[0] - out[0]))) > 0.1
  np.testing.assert_array_equal(swapped[1:], out[1:])
  # A sampler that draws noise needs its keys.
  with pytest.raises(ValueError, match="keys"):
    sampling.sample(model, {}, x0, {}, num_steps=4, denoise_timesteps=8, objective=obj)


def _consistency_exp():
  import types
  from shortcut_jax.objectives.flow_path import Source
  return types.SimpleNamespace(
      config=digits_configs.digits_config("smoke", objective__name="consistency"),
      model=oracle(consistency_velocity, num_classes=NUM_CLASSES),
      objective=objectives.get_objective("consistency"), image_shape=SHAPE, source=Source(),
      to_images=lambda x: x)


def test_consistency_samples_do_not_depend_on_batch_size_or_mesh():
  from shortcut_jax.evaluators import generate as gen
  from shortcut_jax.evaluators import batch_rows
  exp = _consistency_exp()
  run = lambda **kw: gen.generate(exp, {}, num_images=8, num_steps=4, cfg_scale=None, seed=3,
                                  **kw)[0]
  eight = run(batch_size=8)
  one_step = gen.generate(exp, {}, num_images=8, num_steps=1, cfg_scale=None, seed=3)[0]
  assert float(np.mean(np.abs(eight - one_step))) > 0.1  # the re-noising shows
  for kw in (dict(batch_size=4), dict(batch_size=3), dict(batch_size=4, mesh=batch_rows.data_mesh())):
    np.testing.assert_allclose(run(**kw), eight, rtol=0, atol=1e-6, err_msg=str(kw))


_TWO_DEVICES = """
import sys
sys.path.insert(0, "tests")
import numpy as np
import jax
assert jax.device_count() == 2, jax.devices()
import test_baselines as tb
from shortcut_jax.evaluators import batch_rows
from shortcut_jax.evaluators import generate as gen
exp = tb._consistency_exp()
run = lambda **kw: gen.generate(exp, {}, num_images=6, num_steps=4, cfg_scale=None, seed=3,
                                **kw)[0]
alone = run(batch_size=5)  # on the default device, the last batch padded
split = run(batch_size=4, mesh=batch_rows.data_mesh())  # 2 rows on each of 2 devices
np.testing.assert_allclose(split, alone, rtol=0, atol=1e-6)
print("SAME", float(np.abs(alone).mean()))
"""


def test_consistency_samples_are_the_same_on_two_devices():
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  done = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and "SAME" in done.stdout, done.stdout + done.stderr


def test_baseline_sampler_steps_and_level_inputs():
  for name in ("progressive", "consistency-distillation"):
    obj = objectives.get_objective(name)
    assert not obj.uses_level and obj.sampler_step is objectives.euler_step
  assert not objectives.get_objective("consistency").uses_level
  assert objectives.get_objective("livereflow").uses_level


# ----------------------------------------------------------------------- teacher: config, sharding


def test_config_checks():
  for name in ("progressive", "consistency-distillation"):
    with pytest.raises(ValueError, match="teacher_workdir must be set.*digits_naive"):
      config_lib.validate(digits_configs.digits_config(objective__name=name))
    config_lib.validate(digits_configs.digits_config(objective__name=name,
                                                     objective__teacher_workdir="w"))
  with pytest.raises(ValueError, match="objective.schedule_steps"):
    config_lib.validate(digits_configs.digits_config(objective__name="consistency",
                                                     objective__schedule_steps=3))
  with pytest.raises(ValueError, match="objective.path"):
    config_lib.validate(digits_configs.digits_config(objective__name="consistency",
                                                     objective__path="cosine"))
  with pytest.raises(ValueError, match="bootstrap_every"):
    config_lib.validate(digits_configs.digits_config(objective__name="livereflow",
                                                     objective__bootstrap_every=7))
  # schedule_steps follows max_steps unless set.
  c = digits_configs.digits_config()
  c.max_steps = 123
  assert c.objective.schedule_steps == 123
  c.objective.schedule_steps = 50
  c.max_steps = 77
  assert c.objective.schedule_steps == 50 and c.max_steps == 77


def test_teacher_path_forms(tmp_path):
  wd, step = initialisation.resolve_teacher({"teacher_workdir": str(tmp_path / "run")})
  assert wd == str(tmp_path / "run") and step is None
  wd, step = initialisation.resolve_teacher({"teacher_workdir": str(tmp_path / "run" / "checkpoints"
                                                                 / "40"), "teacher_step": 7})
  assert wd == str(tmp_path / "run") and step == 40
  assert initialisation.resolve_teacher({"teacher_workdir": "x", "teacher_step": 7})[1] == 7
  with pytest.raises(teacher_lib.TeacherError, match="digits_naive"):
    initialisation.resolve_teacher({"teacher_workdir": None})


def test_teacher_is_sharded_like_the_params():
  from shortcut_jax import experiment
  c = digits_configs.digits_config("smoke", objective__name="progressive",
                                   objective__teacher_workdir="w")
  abstract = experiment.build_experiment(c, image_shape=(16, 16, 1)).abstract_state()
  specs = sharding_lib.state_partition_specs(abstract, "fsdp", 2, min_size=1000)
  flat = lambda tree: jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  teacher_specs = {sharding_lib.path_name(p): s for p, s in flat(specs.objective_state["teacher"])}
  param_specs = {sharding_lib.path_name(p): s for p, s in flat(specs.params)}
  assert teacher_specs == param_specs
  assert any(any(a is not None for a in s) for s in teacher_specs.values())
  assert specs.objective_state["phase"] == jax.sharding.PartitionSpec()


# ------------------------------------------------------------------- :smoke runs through trainer

NAMES = {"progressive": "digits_progressive",
         "consistency-distillation": "digits_consistency_distillation",
         "consistency": "digits_consistency", "livereflow": "digits_livereflow"}
RUN_STEPS = 12  # Phases of 4 steps (schedule_steps 12, L = 3): boundaries at steps 4 and 8.
RESUMED = ("progressive", "consistency-distillation")  # The objectives with a state of their own.
RESUME_FROM = 6  # Mid-phase: progressive's teacher was refreshed at 4 and is next at 8.


def smoke(config_name, data_dir, **changes):
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f"configs.{config_name}").get_config("smoke")
  c.unlock()
  c.data.data_dir = data_dir
  c.checkpoint.update(async_save=False, max_to_keep=10)
  for name in c.evals:
    c.evals[name].every = 0
  return digits_configs.override(c, **changes)


class Runs:
  """The module's runs, made on first use: a naive teacher, then per objective a straight run
  of RUN_STEPS steps (checkpoints every 2) and a run resumed from its step RESUME_FROM."""

  def __init__(self, root, data_dir):
    from shortcut_jax.train import trainer  # pylint: disable=g-import-not-at-top
    self.trainer, self.root, self.data_dir = trainer, root, data_dir
    self.teacher = str(root / "teacher")
    c = smoke("digits_naive", data_dir, max_steps=30, checkpoint__every_steps=30)
    trainer.train_and_evaluate(c, self.teacher)
    self.done = {}

  def config(self, name, **changes):
    extra = {"objective__teacher_workdir": self.teacher} if name in (
        "progressive", "consistency-distillation") else {}
    extra.update(changes)
    # Progressive's teacher is checked at every even step; the others resume from step 6.
    every = 2 if name == "progressive" else RESUME_FROM
    return smoke(NAMES[name], self.data_dir, max_steps=RUN_STEPS,
                 objective__schedule_steps=RUN_STEPS, checkpoint__every_steps=every, **extra)

  def get(self, name, resume=True):
    """(straight workdir, resumed workdir or None); the resumed run only where `resume`."""
    if name not in self.done or (resume and self.done[name][1] is None):
      straight, resumed = str(self.root / f"{name}_straight"), str(self.root / f"{name}_resumed")
      if name not in self.done:
        self.trainer.train_and_evaluate(self.config(name), straight)
      if not resume:
        self.done[name] = (straight, None)
        return self.done[name]
      os.makedirs(resumed)
      shutil.copy(os.path.join(straight, "config.json"), resumed)
      shutil.copytree(os.path.join(straight, "checkpoints"), os.path.join(resumed, "checkpoints"))
      for step in os.listdir(os.path.join(resumed, "checkpoints")):
        if step.isdigit() and int(step) > RESUME_FROM:
          shutil.rmtree(os.path.join(resumed, "checkpoints", step))
      self.trainer.train_and_evaluate(self.config(name), resumed)
      self.done[name] = (straight, resumed)
    return self.done[name]

  def state(self, workdir, step=None):
    return jax.device_get(experiment.restore_experiment(workdir, step=step)[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  return Runs(tmp_path_factory.mktemp("runs"), data_dir)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def trees_differ(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NAMES))
def test_smoke_run_resumes_exactly_and_samples(runs, name):
  """Objectives with a state of their own (a teacher, a phase) resume bit for bit from a
  mid-phase checkpoint; the stateless ones (consistency training, live reflow) only train and
  sample here: their resume is the trainer's, tested in tests/test_trainer.py."""
  straight, resumed = runs.get(name, resume=name in RESUMED)
  a = runs.state(straight)
  assert int(a.step) == RUN_STEPS
  assert set(a.objective_state) == {"progressive": {"teacher", "phase"},
                                    "consistency-distillation": {"teacher"}}.get(name, set())
  if resumed is not None:
    with open(os.path.join(resumed, "metrics.jsonl")) as f:
      first_logged = json.loads(f.readline())["step"]
    assert first_logged > RESUME_FROM  # The second run did resume, mid-phase.
    b = runs.state(resumed)
    assert int(b.step) == RUN_STEPS
    assert_trees_equal(a, b)  # Params, EMA, optimizer and objective state, bit for bit.
  if name == "progressive":
    assert int(a.objective_state["phase"]) == 2
  run_checks.assert_samples(straight, (16, 16, 1), fingerprint=f"baselines {name}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["progressive", "consistency-distillation"])
def test_teacher_is_loaded_and_never_trained(runs, name):
  straight, _ = runs.get(name)
  teacher_run = runs.state(runs.teacher)
  every = 2 if name == "progressive" else RESUME_FROM
  states = {s: runs.state(straight, s) for s in range(every, RUN_STEPS + 1, every)}
  for s, st in states.items():
    assert trees_differ(st.params, teacher_run.params)  # The student trains...
    if name == "consistency-distillation" or s < 4:
      # ...its teacher is the teacher run's EMA weights, untouched by every train step.
      assert_trees_equal(st.objective_state["teacher"], teacher_run.ema_params)
  if name == "progressive":
    # Refreshed from the student's EMA where a phase starts (steps 4 and 8), unchanged by the
    # train steps inside a phase and after the last boundary.
    assert_trees_equal(states[4].objective_state["teacher"], states[4].ema_params)
    assert_trees_equal(states[6].objective_state["teacher"], states[4].ema_params)
    assert_trees_equal(states[8].objective_state["teacher"], states[8].ema_params)
    for s in (10, 12):
      assert_trees_equal(states[s].objective_state["teacher"], states[8].ema_params)
    assert [int(states[s].objective_state["phase"]) for s in sorted(states)] == [0, 1, 1, 2, 2, 2]


@pytest.mark.slow
def test_a_student_starts_from_a_copy_of_its_teacher_checked_first(runs, tmp_path):
  from shortcut_jax.checkpoints.manager import CheckpointManager  # pylint: disable=g-import-not-at-top
  teacher_run = runs.state(runs.teacher)
  c = runs.config("consistency-distillation")
  exp = experiment.build_experiment(c)
  state, step = initialisation.restore_or_init(exp, CheckpointManager(str(tmp_path / "fresh")))
  assert step == 0 and int(state.step) == 0
  assert_trees_equal(jax.device_get(state.params), teacher_run.params)
  assert_trees_equal(jax.device_get(state.ema_params), teacher_run.ema_params)
  assert_trees_equal(jax.device_get(state.objective_state["teacher"]), teacher_run.ema_params)
  # Real copies: the train step donates the state, so no two leaves may share a buffer.
  buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
  assert len(set(buffers)) == len(buffers)
  # A teacher of another size, or none at all: errors that say what to train, raised before
  # anything is compiled (nothing is traced either: init_fn is never called).
  calls = []
  fake_init = lambda: calls.append(1)
  bad = runs.config("consistency-distillation", model__hidden_size=64)
  with pytest.raises(teacher_lib.TeacherError, match="(?s)model.hidden_size.*digits_naive.py"):
    initialisation.start_from_teacher(experiment.build_experiment(bad), fake_init,
                                      exp.abstract_state(), None, experiment.make_mesh(bad))
  empty = runs.config("progressive", objective__teacher_workdir=str(tmp_path / "none"))
  with pytest.raises(teacher_lib.TeacherError, match="(?s)holds no training run.*train.py"):
    initialisation.start_from_teacher(experiment.build_experiment(empty), fake_init,
                                      exp.abstract_state(), None, experiment.make_mesh(empty))
  # A teacher whose network takes the step size (a shortcut run) does not fit either.
  fake = tmp_path / "shortcut_teacher"
  os.makedirs(fake / "checkpoints")
  with open(os.path.join(runs.teacher, "config.json")) as f:
    raw = json.load(f)
  raw["objective"]["name"] = "shortcut"
  with open(fake / "config.json", "w") as f:
    json.dump(raw, f)
  other = runs.config("progressive", objective__teacher_workdir=str(fake))
  with pytest.raises(teacher_lib.TeacherError, match="(?s)'shortcut' run.*takes the step size"):
    initialisation.start_from_teacher(experiment.build_experiment(other), fake_init,
                                      exp.abstract_state(), None, experiment.make_mesh(other))
  assert not calls


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NAMES))
def test_loss_falls_on_a_fixed_batch(runs, name):
  # The train step built exactly as the trainer builds it (so it comes from the compile cache),
  # from the straight run's last state (after the last phase boundary), on one fixed batch.
  from shortcut_jax.train import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from shortcut_jax import experiment
  from shortcut_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  straight, _ = runs.get(name)
  c = runs.config(name)
  exp, state, _ = experiment.restore_experiment(straight, config=c, mesh=experiment.make_mesh(c))
  mesh = experiment.make_mesh(c)
  _, shardings = experiment.sharded_abstract_state(exp, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  step_fn = train_step_lib.make_train_step(
      exp.model, exp.objective, exp.tx, exp.lr_schedule, c.objective, c.optim.ema_rate,
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding_lib.replicated(mesh)))
  batch = next(pipeline.make_dataset(c.data, split="train", global_batch_size=c.batch_size,
                                     seed=1, train=True, process_index=0, process_count=1))
  batch = sharding_lib.global_batch(batch, batch_sharding)
  losses = []
  for _ in range(40):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["train/loss"]))
  first, last = np.mean(losses[:8]), np.mean(losses[-8:])
  assert np.all(np.isfinite(losses)) and last < 0.75 * first, losses
