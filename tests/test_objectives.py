"""Tests of the naive and shortcut objectives: level/t distributions, the faithful mode against an
independent re-implementation of the original's `get_targets`, and analytic Gaussian oracles."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import gaussian_oracle as go
from shortcut_jax import objectives
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import shortcut as shortcut_lib

A = 1.0 - 1e-5
SHAPE = (4, 4, 1)
NUM_CLASSES = 10


pytestmark = pytest.mark.usefixtures("fast_compile")


def make_config(**overrides):
  c = dict(name="shortcut", denoise_timesteps=128, bootstrap_every=8, bootstrap_ema=True,
           bootstrap_dt_bias=0, bootstrap_cfg=False, cfg_scale=1.5, class_dropout_prob=0.1,
           faithful=False)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def gaussian_params(shape=SHAPE):
  rng = np.random.default_rng(1)
  m = (0.3 * rng.normal(size=shape)).astype(np.float32)
  s = rng.uniform(0.2, 0.6, size=shape).astype(np.float32)
  return m, s


M_DATA, S_DATA = gaussian_params()


def _zero_apply(params, x, t, level, cond, train, rngs):
  return jnp.zeros_like(x)


ZERO_MODEL = VelocityModel(apply_fn=_zero_apply, num_classes=NUM_CLASSES)
EXACT = go.shortcut_oracle(M_DATA, S_DATA, num_classes=NUM_CLASSES, label_shift=0.2)
INSTANT = go.velocity_oracle(M_DATA, S_DATA, num_classes=NUM_CLASSES, label_shift=0.2)


def make_batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  images = M_DATA[None] + S_DATA[None] * rng.normal(size=(batch_size, *SHAPE))
  return {"image": jnp.asarray(images, jnp.float32),
          "label": jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size), jnp.int32)}


@functools.lru_cache(maxsize=None)
def jitted_targets(name, model, config_items):
  config = make_config(**dict(config_items))
  fn = objectives.get_objective(name).targets_fn
  return jax.jit(lambda batch, rng: fn(model, {}, {}, batch, rng, config))


def targets(name, model, batch, rng, **config):
  return jitted_targets(name, model, tuple(sorted(config.items())))(batch, rng)


def expected_faithful_levels(n, big_l, dt_bias):
  """The original's level assignment, written out independently of the library."""
  if dt_bias == 0:
    lv = [big_l - 1 - i for i in range(big_l) for _ in range(n // big_l)]
  else:
    lv = [big_l - 1 - i for i in range(big_l - 2) for _ in range((n // 2) // big_l)]
    lv += [1] * (n // 4) + [0] * (n // 4)
  return np.array(lv + [0] * (n - len(lv)), np.int32)


# ------------------------------------------------------------------------------ level and t grids


def faithful_rows(batch_size, every=8):
  """(bootstrap rows, flow rows) of the faithful layout: the first B // every rows, the rest."""
  return np.arange(batch_size // every), np.arange(batch_size // every, batch_size)


def default_rows(batch_size, every=8):
  """(bootstrap rows, flow rows) of the default layout: every `every`-th row is a bootstrap
  row, and every row is made from the batch row at its position."""
  boot, flow = shortcut_lib.bootstrap_rows(batch_size, every)
  np.testing.assert_array_equal(boot, np.arange(0, batch_size, every))
  return boot, flow


def check_grids(tg, batch_size, rows, big_l=7, m=128):
  boot, flow = rows
  level = np.asarray(tg.level)
  t = np.asarray(tg.t, np.float64)
  assert level.shape == (batch_size,) and t.shape == (batch_size,)
  boot_level, boot_t = level[boot], t[boot]
  assert np.all((boot_level >= 0) & (boot_level < big_l))
  scaled = boot_t * 2.0 ** boot_level
  np.testing.assert_array_equal(scaled, np.round(scaled))
  assert np.all(scaled >= 0) and np.all(scaled < 2.0 ** boot_level)
  np.testing.assert_array_equal(level[flow], big_l)
  flow_scaled = t[flow] * m
  np.testing.assert_array_equal(flow_scaled, np.round(flow_scaled))
  assert np.all((flow_scaled >= 0) & (flow_scaled < m))
  is_boot = np.isin(np.arange(batch_size), boot)
  np.testing.assert_array_equal(np.asarray(tg.groups["bootstrap"]), is_boot.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(tg.groups["flow"]), (~is_boot).astype(np.float32))
  np.testing.assert_allclose(float(tg.metrics["bootstrap_ratio"]), len(boot) / batch_size)
  return boot_level


@pytest.mark.parametrize("batch_size", [8, 32, 64, 256])
@pytest.mark.parametrize("dt_bias", [0, 1])
def test_faithful_level_assignment(batch_size, dt_bias):
  b_boot = batch_size // 8
  tg = targets("shortcut", ZERO_MODEL, make_batch(batch_size), jax.random.PRNGKey(3),
               faithful=True, bootstrap_dt_bias=dt_bias)
  boot_level = check_grids(tg, batch_size, faithful_rows(batch_size))
  np.testing.assert_array_equal(boot_level, expected_faithful_levels(b_boot, 7, dt_bias))
  if batch_size == 32 and dt_bias == 0:
    # The documented flaw: B_b = 4 < L = 7, so every bootstrap sample is a one-step jump.
    np.testing.assert_array_equal(boot_level, 0)


@pytest.mark.parametrize("batch_size", [8, 32, 64, 256])
def test_default_levels_cover_every_level(batch_size):
  b_boot = batch_size // 8
  seen = set()
  for seed in range(40 if b_boot < 7 else 1):
    tg = targets("shortcut", ZERO_MODEL, make_batch(batch_size), jax.random.PRNGKey(seed))
    boot_level = check_grids(tg, batch_size, default_rows(batch_size))
    seen |= set(boot_level.tolist())
    counts = np.bincount(boot_level, minlength=7)
    if b_boot >= 7:
      assert counts.min() >= 1 and counts.max() - counts.min() <= 1, counts
      # Ties go to the coarser levels.
      assert np.all(np.diff(counts) <= 0), counts
    else:
      assert counts.max() == 1, counts  # Distinct levels when there are fewer samples than levels.
    assert np.all(np.diff(boot_level) <= 0)  # Finest first.
  # Over a few steps every level gets trained even when B_b < L.
  assert seen == set(range(7)), seen


def test_default_level_counts_examples():
  w0 = shortcut_lib.level_weights(7, 0)
  np.testing.assert_array_equal(shortcut_lib.balanced_level_counts(16, w0), [3, 3, 2, 2, 2, 2, 2])
  np.testing.assert_array_equal(shortcut_lib.balanced_level_counts(7, w0), [1] * 7)
  w1 = shortcut_lib.level_weights(7, 1)
  for n in (7, 8, 16, 32, 100):
    counts = shortcut_lib.balanced_level_counts(n, w1)
    assert counts.sum() == n and counts.min() >= 1
  # A quarter each to levels 0 and 1, the rest spread over 2..6.
  np.testing.assert_array_equal(shortcut_lib.balanced_level_counts(40, w1), [10, 10, 4, 4, 4, 4, 4])


def test_default_dt_bias_1_levels():
  tg = targets("shortcut", ZERO_MODEL, make_batch(256), jax.random.PRNGKey(0), bootstrap_dt_bias=1)
  boot_level = check_grids(tg, 256, default_rows(256))
  counts = np.bincount(boot_level, minlength=7)
  assert counts[0] == 8 and counts[1] == 8 and counts[2:].sum() == 16 and counts.min() >= 3


# ------------------------------------------- faithful: the original's key use, levels and order


def original_get_targets(key, images, labels, teacher, *, m, every, dt_bias, use_cfg, cfg_scale,
                         p_drop, num_classes):
  """An independent re-implementation of the original's `get_targets` (key use, levels, order)."""
  label_key, time_key, noise_key = jax.random.split(key, 3)
  b = images.shape[0]
  n = b // every
  big_l = int(np.log2(m))
  levels = jnp.asarray(expected_faithful_levels(n, big_l, dt_bias), jnp.float32)
  num_cfg = n // big_l if dt_bias == 0 else (n // 2) // big_l
  dt = 1 / (2 ** levels)
  t = jax.random.randint(time_key, (n,), 0, (2 ** levels).astype(jnp.int32)).astype(jnp.float32)
  t = t / (2 ** levels)
  tf = t[:, None, None, None]
  x1 = images[:n]
  x0 = jax.random.normal(noise_key, x1.shape)
  xt = (1 - (1 - 1e-5) * tf) * x0 + tf * x1
  bl = labels[:n]

  def call(x, tt, lab):
    v = teacher(x, tt, levels + 1, lab)
    if use_cfg and num_cfg:
      vu = teacher(x[:num_cfg], tt[:num_cfg], levels[:num_cfg] + 1,
                   jnp.full((num_cfg,), num_classes, jnp.int32))
      v = v.at[:num_cfg].set(vu + cfg_scale * (v[:num_cfg] - vu))
    return v

  v1 = call(xt, t, bl)
  x2 = jnp.clip(xt + (dt / 2)[:, None, None, None] * v1, -4, 4)
  v2 = call(x2, t + dt / 2, bl)
  vb = jnp.clip((v1 + v2) / 2, -4, 4)

  drop = jax.random.bernoulli(label_key, p_drop, (b,))
  ld = jnp.where(drop, num_classes, labels)
  t_flow = jax.random.randint(time_key, (b,), 0, m).astype(jnp.float32) / m
  tff = t_flow[:, None, None, None]
  x0f = jax.random.normal(noise_key, images.shape)
  xtf = (1 - (1 - 1e-5) * tff) * x0f + tff * images
  vf = images - (1 - 1e-5) * x0f
  k = b - n
  lev = jnp.concatenate([levels, jnp.full((b,), big_l, jnp.float32)[:k]])
  return dict(x=jnp.concatenate([xt, xtf[:k]]), t=jnp.concatenate([t, t_flow[:k]]), level=lev,
              label=jnp.concatenate([bl, ld[:k]]), target=jnp.concatenate([vb, vf[:k]]),
              flow_x0=x0f)


@pytest.mark.parametrize("dt_bias,use_cfg", [(0, True), (1, False), (1, True)])
def test_faithful_matches_the_original_get_targets(dt_bias, use_cfg):
  m, every, batch_size = 8, 4, 48  # B_b = 12, L = 3: several levels and CFG'd samples.
  batch = make_batch(batch_size, seed=5)
  key = jax.random.PRNGKey(11)
  cfg = dict(denoise_timesteps=m, bootstrap_every=every, bootstrap_dt_bias=dt_bias,
             bootstrap_cfg=use_cfg, cfg_scale=2.5, class_dropout_prob=0.3, faithful=True)
  got = targets("shortcut", EXACT, batch, key, **cfg)

  # Faithful mode shuffles the batch with its own key first, as the original's update step does.
  perm_key, targets_key = jax.random.split(key)
  perm = jax.random.permutation(perm_key, batch_size)
  images, labels = batch["image"][perm], batch["label"][perm]
  teacher = lambda x, t, lv, lab: EXACT({}, x, t, lv, {"label": lab})
  want = jax.jit(functools.partial(
      original_get_targets, teacher=teacher, m=m, every=every, dt_bias=dt_bias, use_cfg=use_cfg,
      cfg_scale=2.5, p_drop=0.3, num_classes=NUM_CLASSES))(targets_key, images, labels)

  np.testing.assert_array_equal(np.asarray(got.level), np.asarray(want["level"]).astype(np.int32))
  np.testing.assert_array_equal(np.asarray(got.t), np.asarray(want["t"]))
  np.testing.assert_array_equal(np.asarray(got.cond["label"]), np.asarray(want["label"]))
  np.testing.assert_array_equal(np.asarray(got.x), np.asarray(want["x"]))
  # The targets are sums and products of the teacher's outputs, which the two programs may fuse
  # differently (XLA's CPU emitters, scripts/test.sh): within a few float32 ulps.
  np.testing.assert_array_max_ulp(np.asarray(got.target), np.asarray(want["target"]), maxulp=4)
  # The documented key reuse: the flow noise is normal(split(key, 3)[2]) over the whole batch.
  b_boot = batch_size // every
  x1 = np.asarray(images)[:batch_size - b_boot]
  x0 = np.asarray(jax.random.normal(jax.random.split(targets_key, 3)[2], images.shape))
  x0 = x0[:batch_size - b_boot]
  t = np.asarray(got.t)[b_boot:, None, None, None]
  np.testing.assert_allclose(np.asarray(got.x)[b_boot:], (1 - A * t) * x0 + t * x1,
                             rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------- analytic Gaussian checks


def expected_shortcut(x, t, level, labels, m=M_DATA, s=S_DATA, shift=0.2):
  mean = go.label_mean(m.astype(np.float64), labels, NUM_CLASSES, shift)
  return go.shortcut_velocity(np.asarray(x, np.float64), np.asarray(t, np.float64),
                              2.0 ** -np.asarray(level, np.float64), mean, s.astype(np.float64))


def test_exact_shortcut_is_a_fixed_point_of_the_bootstrap_targets():
  batch_size = 64  # B_b = 8 >= L = 7: every level 0..6 appears.
  boot, flow = default_rows(batch_size)
  tg = targets("shortcut", EXACT, make_batch(batch_size, seed=2), jax.random.PRNGKey(4))
  x, t, level = np.asarray(tg.x)[boot], np.asarray(tg.t)[boot], np.asarray(tg.level)[boot]
  assert set(level.tolist()) == set(range(7))
  want = expected_shortcut(x, t, level, np.asarray(tg.cond["label"])[boot])
  # The clip at +-4 must not be active, or the fixed point would not hold.
  d = 2.0 ** -level.astype(np.float64)[:, None, None, None]
  tt = t.astype(np.float64)[:, None, None, None]
  mean = go.label_mean(M_DATA.astype(np.float64), np.asarray(tg.cond["label"])[boot],
                       NUM_CLASSES, 0.2)
  x_mid = go.ode_solution(x.astype(np.float64), tt, tt + d / 2, mean, S_DATA.astype(np.float64))
  assert max(np.abs(want).max(), np.abs(x_mid).max()) < 3.9
  np.testing.assert_allclose(np.asarray(tg.target)[boot], want, atol=1e-5, rtol=0)
  # Flow part: target is x1 - a x0 and x is on the interpolation path (x0 recovered from target).
  images = np.asarray(make_batch(batch_size, seed=2)["image"], np.float64)[flow]
  x0 = (images - np.asarray(tg.target, np.float64)[flow]) / A
  tf = np.asarray(tg.t, np.float64)[flow, None, None, None]
  np.testing.assert_allclose(np.asarray(tg.x)[flow], (1 - A * tf) * x0 + tf * images, atol=2e-5)
  assert abs(x0.mean()) < 0.15 and abs(x0.std() - 1) < 0.15


def test_instantaneous_velocity_teacher_is_not_a_fixed_point():
  boot, _ = default_rows(64)
  tg = targets("shortcut", INSTANT, make_batch(64, seed=2), jax.random.PRNGKey(4))
  x, t, level = np.asarray(tg.x)[boot], np.asarray(tg.t)[boot], np.asarray(tg.level)[boot]
  want = expected_shortcut(x, t, level, np.asarray(tg.cond["label"])[boot])
  err = np.abs(np.asarray(tg.target)[boot] - want).max(axis=(1, 2, 3))
  assert err[level == 0].min() > 1e-2, err  # One-step jumps differ from two Euler half steps.
  assert err.max() > 1e-2


@pytest.mark.parametrize("batch_size", [64, 32])  # B_b = 8 (fixed levels), 4 (random levels).
def test_bootstrap_cfg_guides_the_finest_level_only(batch_size):
  (boot, _), w = default_rows(batch_size), 3.0
  batch = make_batch(batch_size, seed=3)
  for seed in range(20):  # With random levels, find a step where level L-1 = 6 was drawn.
    tg = targets("shortcut", EXACT, batch, jax.random.PRNGKey(seed), bootstrap_cfg=True,
                 cfg_scale=w)
    if 6 in np.asarray(tg.level)[boot]:
      break
  x = np.asarray(tg.x, np.float64)[boot]
  t = np.asarray(tg.t, np.float64)[boot]
  level = np.asarray(tg.level)[boot]
  labels = np.asarray(tg.cond["label"])[boot]
  np.testing.assert_array_equal(labels, np.asarray(batch["label"])[boot])  # No dropout here.
  null = np.full_like(labels, NUM_CLASSES)
  d = 2.0 ** -level.astype(np.float64)
  dd = d[:, None, None, None]

  def v(xx, tt, guided):
    vc = expected_shortcut(xx, tt, level + 1, labels)
    vu = expected_shortcut(xx, tt, level + 1, null)
    return np.where(guided[:, None, None, None], vu + w * (vc - vu), vc)

  guided = level == 6
  v1 = v(x, t, guided)
  v2 = v(np.clip(x + dd / 2 * v1, -4, 4), t + d / 2, guided)
  want = np.clip((v1 + v2) / 2, -4, 4)
  np.testing.assert_allclose(np.asarray(tg.target)[boot], want, atol=1e-5)
  assert guided.sum() == 1
  # And the guidance does change the guided row (so the check above can fail).
  unguided = (expected_shortcut(x, t, level, labels))
  assert np.abs(want[guided] - unguided[guided]).max() > 1e-2


def test_teacher_weights_follow_bootstrap_ema():
  seen = {}

  def apply_fn(params, x, t, level, cond, train, rngs):
    return jnp.zeros_like(x) + params["c"]

  model = VelocityModel(apply_fn=apply_fn, num_classes=NUM_CLASSES)
  batch = make_batch(64)
  fn = objectives.get_objective("shortcut").targets_fn
  for ema in (True, False):
    run = jax.jit(functools.partial(fn, model, config=make_config(bootstrap_ema=ema)))
    tg = run({"c": jnp.float32(1.0)}, {"c": jnp.float32(2.0)}, batch, jax.random.PRNGKey(0))
    seen[ema] = float(np.asarray(tg.target)[0].mean())
  assert seen == {True: 2.0, False: 1.0}


# ----------------------------------------------------------------------------------- labels, naive


@pytest.mark.parametrize("name", ["naive", "shortcut"])
def test_cfg_scale_zero_nulls_every_label(name):
  tg = targets(name, ZERO_MODEL, make_batch(64), jax.random.PRNGKey(1), cfg_scale=0.0,
               class_dropout_prob=0.0)
  np.testing.assert_array_equal(np.asarray(tg.cond["label"]), NUM_CLASSES)
  assert float(tg.metrics["dropped_ratio"]) == 1.0


@pytest.mark.parametrize("name", ["naive", "shortcut"])
def test_label_dropout_rate(name):
  batch_size = 1024
  batch = make_batch(batch_size, seed=7)
  tg = targets(name, ZERO_MODEL, batch, jax.random.PRNGKey(2), class_dropout_prob=0.25)
  boot, flow_rows = (default_rows(batch_size) if name == "shortcut"
                     else (np.arange(0), np.arange(batch_size)))
  labels = np.asarray(tg.cond["label"])
  np.testing.assert_array_equal(labels[boot], np.asarray(batch["label"])[boot])
  flow = labels[flow_rows]
  frac = np.mean(flow == NUM_CLASSES)
  assert 0.2 < frac < 0.3, frac
  kept = flow != NUM_CLASSES
  # Default mode: every row is made from the batch row at its position, labels kept where not
  # dropped.
  np.testing.assert_array_equal(flow[kept], np.asarray(batch["label"])[flow_rows][kept])


def test_naive_targets():
  batch_size = 256
  batch = make_batch(batch_size, seed=4)
  tg = targets("naive", ZERO_MODEL, batch, jax.random.PRNGKey(6), denoise_timesteps=16)
  np.testing.assert_array_equal(np.asarray(tg.level), 4)
  scaled = np.asarray(tg.t, np.float64) * 16
  np.testing.assert_array_equal(scaled, np.round(scaled))
  assert scaled.min() == 0 and scaled.max() == 15
  images = np.asarray(batch["image"], np.float64)
  x0 = (images - np.asarray(tg.target, np.float64)) / A
  t = np.asarray(tg.t, np.float64)[:, None, None, None]
  np.testing.assert_allclose(np.asarray(tg.x), (1 - A * t) * x0 + t * images, atol=2e-5)
  assert abs(x0.mean()) < 0.1 and abs(x0.std() - 1) < 0.1
  assert list(tg.groups) == ["flow"]
  assert not objectives.get_objective("naive").uses_level
  assert objectives.get_objective("shortcut").uses_level


def test_default_draws_use_independent_keys():
  # In the original the bootstrap noise equals the first rows of the flow noise (same key); the
  # default mode draws them independently.
  batch_size, b_boot = 64, 8
  batch = make_batch(batch_size)
  key = jax.random.PRNGKey(8)
  for faithful in (True, False):
    tg = targets("shortcut", ZERO_MODEL, batch, key, faithful=faithful, class_dropout_prob=0.0)
    x = np.asarray(tg.x, np.float64)
    t = np.asarray(tg.t, np.float64)[:, None, None, None]
    images = np.asarray(batch["image"], np.float64)
    if faithful:
      perm = jax.random.permutation(jax.random.split(key)[0], batch_size)
      images = images[np.asarray(perm)]
      boot, flow = faithful_rows(batch_size)
      boot_images, flow_images = images[:b_boot], images[:batch_size - b_boot]
    else:
      boot, flow = default_rows(batch_size)
      boot_images, flow_images = images[boot], images[flow]
    boot_x0 = (x[boot] - t[boot] * boot_images) / (1 - A * t[boot])
    flow_x0 = (flow_images - np.asarray(tg.target, np.float64)[flow]) / A
    same = np.allclose(boot_x0[:4], flow_x0[:4], atol=1e-4)
    assert same == faithful


# ------------------------------------------- improved shortcut models: twin EMA, wavelet loss


def test_twin_ema_teacher_is_the_objective_state_and_follows_its_rate():
  objective = objectives.get_objective("shortcut")
  config = make_config(target_ema_rate=0.9)
  params = {"c": jnp.float32(1.0)}
  state = objective.init_state(params, config)
  assert float(state["target_ema"]["c"]) == 1.0
  for new in (3.0, 5.0):  # 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * 1.2 + 0.1 * 5 = 1.58
    state = objective.update_state(state, step=0, params={"c": jnp.float32(new)},
                                   ema_params=params, config=config)
  np.testing.assert_allclose(float(state["target_ema"]["c"]), 1.58, rtol=1e-6)
  assert objective.init_state(params, make_config()) == {}  # off: no state, no extra copy

  def apply_fn(p, x, t, level, cond, train, rngs):
    return jnp.zeros_like(x) + p["c"]

  model = VelocityModel(apply_fn=apply_fn, num_classes=NUM_CLASSES)
  run = jax.jit(functools.partial(objective.targets_fn, model, config=config))
  tg = run({"c": jnp.float32(1.0)}, {"c": jnp.float32(2.0)}, make_batch(64),
           jax.random.PRNGKey(0), state=state)
  boot = np.asarray(tg.groups["bootstrap"]) > 0
  np.testing.assert_allclose(np.asarray(tg.target)[boot], 1.58, rtol=1e-6)  # not 2 (slow EMA)


def _numpy_haar_loss(diff, levels):
  """The wavelet loss from its definition, by explicit 2x2 blocks in float64."""
  diff = np.asarray(diff, np.float64)
  losses = []
  for sample in diff:
    bands, x = [], sample
    for _ in range(levels):
      if x.shape[0] % 2 or x.shape[1] % 2:
        break
      h, w = x.shape[0] // 2, x.shape[1] // 2
      ll, lh, hl, hh = (np.zeros((h, w, x.shape[2])) for _ in range(4))
      for i in range(h):
        for j in range(w):
          a, b, c, d = x[2 * i, 2 * j], x[2 * i, 2 * j + 1], x[2 * i + 1, 2 * j], x[2 * i + 1, 2 * j + 1]
          ll[i, j], lh[i, j] = (a + b + c + d) / 2, (a - b + c - d) / 2
          hl[i, j], hh[i, j] = (a + b - c - d) / 2, (a - b - c + d) / 2
      bands += [lh, hl, hh]
      x = ll
    bands.append(x)
    losses.append(np.mean([np.mean(b ** 2) for b in bands]))
  return np.array(losses)


@pytest.mark.parametrize("shape, levels", [((8, 8, 2), 5), ((12, 8, 1), 3), ((6, 4, 3), 0)])
def test_wavelet_loss_against_its_definition(shape, levels):
  from shortcut_jax.core import wavelets
  rng = np.random.default_rng(0)
  pred, target = (rng.normal(size=(3, *shape)).astype(np.float32) for _ in range(2))
  got = wavelets.wavelet_loss(jnp.asarray(pred), jnp.asarray(target), levels)
  np.testing.assert_allclose(np.asarray(got), _numpy_haar_loss(pred - target, levels), rtol=1e-5)
  # Orthonormal: the bands keep the error's sum of squares.
  bands = wavelets.haar_bands(jnp.asarray(pred - target), levels)
  np.testing.assert_allclose(sum(float(jnp.sum(b ** 2)) for b in bands),
                             float(np.sum((pred - target) ** 2)), rtol=1e-5)
  if levels == 0:  # no levels: the MSE
    np.testing.assert_allclose(np.asarray(got), np.mean((pred - target) ** 2, axis=(1, 2, 3)),
                               rtol=1e-6)
  tg = objectives.base.TrainingTargets(x=None, t=None, level=None, cond={}, target=target,
                                       groups={}, metrics={})
  loss, _ = shortcut_lib.shortcut_loss(jnp.asarray(pred), tg, make_config(wavelet_levels=levels))
  np.testing.assert_allclose(np.asarray(loss), np.asarray(got), rtol=1e-6)
