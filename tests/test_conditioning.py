"""Condition kinds (labels and images together), image conditioning in the DiT, the model
registry, and conditions through objectives, teacher calls and generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax import objectives
from shortcut_jax import sampling
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.models.velocity_model import VelocityModel

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 5
BOTH = cond_lib.Conditioning((cond_lib.LabelKind(NUM_CLASSES), cond_lib.ImageKind(guided=True)))


def _cond(b=64, hw=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"label": jnp.asarray(rng.integers(0, NUM_CLASSES, b), jnp.int32),
          "cond_image": jnp.asarray(rng.uniform(0.1, 1.0, (b, hw, hw, 3)), jnp.float32)}


def test_null_condition_for_labels_and_images_together():
  cond = _cond(8)
  null = BOTH.null(cond)
  np.testing.assert_array_equal(np.asarray(null["label"]), NUM_CLASSES)
  np.testing.assert_array_equal(np.asarray(null["cond_image"]), 0.0)
  # An image kind never trained with dropout is not nulled in the CFG branch.
  unguided = cond_lib.Conditioning((cond_lib.LabelKind(NUM_CLASSES), cond_lib.ImageKind()))
  np.testing.assert_array_equal(np.asarray(unguided.null(cond)["cond_image"]),
                                np.asarray(cond["cond_image"]))
  # cfg_scale == 0 nulls labels only (a super-resolution input is never dropped for that).
  trained = BOTH.unguided(cond, {"cfg_scale": 0.0})
  np.testing.assert_array_equal(np.asarray(trained["label"]), NUM_CLASSES)
  np.testing.assert_array_equal(np.asarray(trained["cond_image"]), np.asarray(cond["cond_image"]))
  kept = BOTH.unguided(cond, {"cfg_scale": 1.5})
  np.testing.assert_array_equal(np.asarray(kept["label"]), np.asarray(cond["label"]))


@pytest.mark.parametrize("p_label,p_image", [(0.0, 0.0), (1.0, 1.0), (0.5, 0.0), (0.0, 0.5),
                                             (0.5, 0.5)])
def test_condition_dropout_each_kind_with_its_own_probability(p_label, p_image):
  b = 4096
  cond = _cond(b)
  config = {"class_dropout_prob": p_label, "image_dropout_prob": p_image}
  dropped, metrics = BOTH.drop(cond, jax.random.PRNGKey(3), config)
  label_null = np.asarray(dropped["label"]) == NUM_CLASSES
  image_null = np.all(np.asarray(dropped["cond_image"]) == 0, axis=(1, 2, 3))
  assert abs(label_null.mean() - p_label) < 0.04 and abs(image_null.mean() - p_image) < 0.04
  # Kept rows are untouched.
  np.testing.assert_array_equal(np.asarray(dropped["label"])[~label_null],
                                np.asarray(cond["label"])[~label_null])
  np.testing.assert_array_equal(np.asarray(dropped["cond_image"])[~image_null],
                                np.asarray(cond["cond_image"])[~image_null])
  if p_label == p_image == 0.5:
    # Independent draws per kind: the two masks are not the same rows.
    assert 0.15 < np.mean(label_null & image_null) < 0.35
  assert float(metrics["dropped_ratio"]) == pytest.approx(label_null.mean())
  assert float(metrics["dropped_ratio_cond_image"]) == pytest.approx(image_null.mean())


def test_label_dropout_draws_what_the_original_draws():
  # The first kind draws with the key itself: bernoulli(key, p, (B,)), as the original.
  cond = _cond(256)
  key = jax.random.PRNGKey(7)
  dropped, _ = BOTH.drop(cond, key, {"class_dropout_prob": 0.3})
  expected = np.where(np.asarray(jax.random.bernoulli(key, 0.3, (256,))), NUM_CLASSES,
                      np.asarray(cond["label"]))
  np.testing.assert_array_equal(np.asarray(dropped["label"]), expected)


def test_unknown_or_missing_condition_is_an_error():
  model = VelocityModel(apply_fn=lambda p, x, t, lv, c, tr, r: x, conditioning=BOTH)
  x, t = jnp.zeros((2, 4, 4, 3)), jnp.zeros((2,))
  cond = _cond(2)
  assert model({}, x, t, t, cond).shape == x.shape
  with pytest.raises(ValueError, match="embedding"):
    model({}, x, t, t, dict(cond, embedding=jnp.zeros((2, 8))))
  with pytest.raises(ValueError, match="cond_image"):
    model({}, x, t, t, {"label": cond["label"]})
  with pytest.raises(ValueError, match="batch size"):
    model({}, x, t, t, dict(cond, label=jnp.zeros((3,), jnp.int32)))
  labels_only = VelocityModel(apply_fn=lambda p, x, t, lv, c, tr, r: x, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match="cond_image"):
    labels_only({}, x, t, t, cond)


def _dit(mode, channels=3, **kw):
  return dit_lib.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
                     out_channels=channels, class_dropout_prob=0.0, num_classes=NUM_CLASSES,
                     dtype=jnp.float32, cond_image_mode=mode, **kw)


def _randomize(params, seed=1):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def test_image_conditioning_keeps_unconditioned_tree_and_adds_only_its_parameters():
  shape = (4, 4, 3)
  base = dit_lib.init_params(_dit(None), jax.random.PRNGKey(0), shape)
  concat = dit_lib.init_params(_dit("concat"), jax.random.PRNGKey(0), shape)
  tokens = dit_lib.init_params(_dit("tokens"), jax.random.PRNGKey(0), shape)
  paths = lambda p: {jax.tree_util.keystr(k): v.shape for k, v in
                     jax.tree_util.tree_flatten_with_path(p)[0]}
  b, c, t = paths(base), paths(concat), paths(tokens)
  assert set(c) == set(b)
  changed = {k for k in b if b[k] != c[k]}
  assert changed == {"['PatchEmbed_0']['Conv_0']['kernel']"}
  assert c["['PatchEmbed_0']['Conv_0']['kernel']"] == (2, 2, 6, 16)
  assert set(t) - set(b) == {"['CondPatchEmbed_0']['Conv_0']['kernel']",
                             "['CondPatchEmbed_0']['Conv_0']['bias']",
                             "['CondFusion_0']['kernel']", "['CondFusion_0']['bias']"}
  assert all(t[k] == b[k] for k in b)
  assert t["['CondFusion_0']['kernel']"] == (32, 16)


@pytest.mark.parametrize("mode", ["concat", "tokens"])
def test_dit_output_changes_with_the_image_condition(mode):
  module = _dit(mode)
  params = _randomize(dit_lib.init_params(module, jax.random.PRNGKey(0), (4, 4, 3)))
  model = dit_lib.velocity_model(module)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  t = jnp.asarray([0.2, 0.6])
  c1, c2 = _cond(2, seed=1), _cond(2, seed=2)
  c2["label"] = c1["label"]
  out1, out2 = model(params, x, t, t, c1), model(params, x, t, t, c2)
  assert np.abs(np.asarray(out1) - np.asarray(out2)).max() > 1e-2
  # Only its own row's condition matters.
  c3 = {"label": c1["label"], "cond_image": c1["cond_image"].at[1].set(c2["cond_image"][1])}
  out3 = model(params, x, t, t, c3)
  np.testing.assert_allclose(np.asarray(out3[0]), np.asarray(out1[0]), rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(out3[1]) - np.asarray(out1[1])).max() > 1e-2


def test_concat_mode_is_the_dit_on_stacked_channels():
  cond_module, plain = _dit("concat"), _dit(None)
  params = _randomize(dit_lib.init_params(cond_module, jax.random.PRNGKey(0), (4, 4, 3)))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  img = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  t, y = np.array([0.1, 0.9], np.float32), np.array([0, 2], np.int32)
  out = cond_module.apply({"params": params}, x, t, t, y, cond_image=img)
  ref = plain.apply({"params": params}, np.concatenate([x, img], -1), t, t, y)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_model_registry_and_batch_spec(tmp_path):
  from digits_configs import digits_config
  from shortcut_jax import experiment
  c = digits_config("smoke")
  c.data.low_res_factor = 2
  exp = experiment.build_experiment(c, image_shape=(16, 16, 1))
  assert exp.batch_spec == {"image": (16, 16, 1), "cond_image": (16, 16, 1)}
  assert exp.model.conditioning.keys == ("label", "cond_image")
  state = jax.eval_shape(exp.init_state, jax.random.PRNGKey(0))
  assert state.params["PatchEmbed_0"]["Conv_0"]["kernel"].shape[2] == 2
  c.model.name = "unet"
  with pytest.raises(ValueError, match="model.name"):
    experiment.build_experiment(c, image_shape=(16, 16, 1))


def _image_echo_model():
  """v(x, t, level, cond) = cond_image (+ 0 * x): a model whose output is its image condition."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    return cond["cond_image"] + 0.0 * x
  return VelocityModel(apply_fn=apply_fn, conditioning=cond_lib.Conditioning(
      (cond_lib.LabelKind(NUM_CLASSES), cond_lib.ImageKind())))


def test_shortcut_teacher_calls_see_the_image_condition():
  model = _image_echo_model()
  b = 16
  images = jnp.zeros((b, 4, 4, 3))
  cond = _cond(b)
  batch = dict(cond, image=images)
  config = dict(denoise_timesteps=8, bootstrap_every=2, bootstrap_ema=True, cfg_scale=0.0,
                class_dropout_prob=0.0, faithful=False)
  out = objectives.get_objective("shortcut").targets_fn(model, {}, {}, batch, jax.random.PRNGKey(0),
                                                         config)
  boot = np.asarray(out.groups["bootstrap"]) > 0
  np.testing.assert_array_equal(boot, np.arange(b) % 2 == 0)  # Every 2nd row (default layout).
  # Teacher target = mean of two teacher velocities = the rows' own condition images.
  np.testing.assert_allclose(np.asarray(out.target)[boot],
                             np.asarray(cond["cond_image"])[boot], rtol=1e-6)
  # Every row keeps its image condition, in the order of the targets.
  np.testing.assert_array_equal(np.asarray(out.cond["cond_image"]), np.asarray(cond["cond_image"]))


def test_regression_objective_and_its_one_step_sampler():
  model = _image_echo_model()
  b = 8
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (b, 4, 4, 3)), jnp.float32)
  cond = _cond(b)
  objective = objectives.get_objective("regression")
  out = objective.targets_fn(model, {}, {}, dict(cond, image=images), jax.random.PRNGKey(0),
                             {"denoise_timesteps": 8, "cfg_scale": 0.0})
  np.testing.assert_array_equal(np.asarray(out.x), 0.0)
  np.testing.assert_array_equal(np.asarray(out.t), 0.0)
  np.testing.assert_allclose(np.asarray(out.target), np.asarray(images), rtol=1e-6)
  # The one-step sampler from the zero source returns the network's prediction.
  x0 = jnp.zeros_like(images)
  x1 = sampling.sample(model, {}, x0, cond, num_steps=1, denoise_timesteps=8, uses_level=False)
  np.testing.assert_allclose(np.asarray(x1), np.asarray(cond["cond_image"]), rtol=1e-6)
  with pytest.raises(ValueError, match="at most 1"):
    objective.check_steps([1, 4])
  # The residual form (`source='cond_image'`): it starts from the upsampled LR input and regresses
  # the rest of the way to HR, so start + target is the image; the run's source says so too.
  out = objective.targets_fn(model, {}, {}, dict(cond, image=images), jax.random.PRNGKey(0),
                             {"denoise_timesteps": 8, "cfg_scale": 0.0, "source": "cond_image",
                              "source_noise_step": 0})
  np.testing.assert_array_equal(np.asarray(out.x), np.asarray(cond["cond_image"]))
  np.testing.assert_allclose(np.asarray(out.x + out.target), np.asarray(images), atol=1e-4)
  from shortcut_jax.objectives import flow_path
  assert flow_path.source_from_config({"source": "cond_image", "source_noise_step": 0},
                                      objective.source).name == "cond_image"
  assert flow_path.source_from_config({"source": "gaussian", "source_noise_step": 0},
                                      objective.source).name == "zeros"


def test_latent_encoder_encodes_sample_and_condition_image():
  from shortcut_jax import latents
  from shortcut_jax.models import vae as vae_lib
  vae = vae_lib.tiny_vae(seed=0)
  encoder = latents.LatentEncoder(vae=vae, mode="online")
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  cond_image = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  key = jax.random.PRNGKey(4)
  out = encoder(vae.params, {"image": images, "cond_image": cond_image, "label": jnp.zeros(2)}, key)
  mean, std = vae.posterior(images)
  np.testing.assert_allclose(np.asarray(out["image"]),
                             np.asarray(vae.sample_latents(mean, std, key)), rtol=1e-5, atol=1e-6)
  # The condition is the (deterministic) posterior mean, scaled, at the sample's latent size.
  np.testing.assert_allclose(np.asarray(out["cond_image"]), np.asarray(vae.encode(cond_image)),
                             rtol=1e-5, atol=1e-6)
  assert out["image"].shape == out["cond_image"].shape == (2, 4, 4, 4)
