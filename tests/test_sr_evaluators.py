"""Super-resolution evaluators on stub models (no training): the labels a label-conditional
upscaler is sampled with, and tiled sampling from one noise image per output image."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import digits_configs
from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax import objectives
from shortcut_jax import tiling
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import conditions
from shortcut_jax.evaluators import super_resolution as sr
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives.flow_path import Source

NUM_CLASSES = 10


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def stub_exp(apply_fn, *, size=8, objective="naive", source=Source()):
  """A label- and image-conditioned 2x upscaler whose network is `apply_fn` (the digits config's
  conditioning settings: 10 classes, label dropout, guidance), on size×size×1 pixels."""
  config = digits_configs.digits_config("smoke", data__low_res_factor=2, objective__name=objective)
  model = VelocityModel(apply_fn=apply_fn, conditioning=cond_lib.Conditioning(
      (cond_lib.LabelKind(NUM_CLASSES), cond_lib.ImageKind())))
  return types.SimpleNamespace(config=config, model=model,
                               objective=objectives.get_objective(objective),
                               image_shape=(size, size, 1), source=source,
                               to_images=lambda x: x)


def to_label_value(params, x, t, level, cond, train, rngs):
  """One Euler step from t = 0 lands on label / 10 everywhere (the null label: -0.5)."""
  label = cond["label"].astype(jnp.float32)
  value = jnp.where(label == NUM_CLASSES, -0.5, label / NUM_CLASSES)
  return value.reshape(-1, 1, 1, 1) - x


def _examples(labels, size=8):
  n = len(labels)
  rng = np.random.default_rng(0)
  return {"image": rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32),
          "cond_image": rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32),
          "label": np.asarray(labels, np.int32)}


LABELS = [7, 7, 3, 9, 0]  # Not i % 10.


def test_sample_cond_takes_the_examples_labels():
  exp = stub_exp(to_label_value)
  examples = _examples(LABELS)
  cond = conditions.sample_cond(exp, 5, examples=examples)
  np.testing.assert_array_equal(cond["label"], LABELS)
  np.testing.assert_array_equal(cond["cond_image"], examples["cond_image"])
  # Images without labels (user images, a cascade's input): the null label, never i % C.
  cond = conditions.sample_cond(exp, 5, examples={"cond_image": examples["cond_image"]})
  np.testing.assert_array_equal(cond["label"], NUM_CLASSES)
  # An explicit label wins.
  cond = conditions.sample_cond(exp, 5, examples=examples, labels=np.full(5, 2))
  np.testing.assert_array_equal(cond["label"], 2)


def test_comparison_strip_and_generation_use_the_held_out_labels(monkeypatch):
  exp = stub_exp(to_label_value)
  examples = _examples(LABELS)
  monkeypatch.setattr(conditions, "held_out_examples", lambda config, n, split="test": {
      k: v[:n] for k, v in examples.items()})
  strip = sr.comparison_strip(exp, {}, steps=[1], num_images=5)
  # Row i: LR | bicubic | 1-step sample | HR, cells of 8x8 with a 1-pixel border.
  for i, label in enumerate(LABELS):
    cell = strip[1 + i * 9:1 + i * 9 + 8, 1 + 2 * 9:1 + 2 * 9 + 8]
    np.testing.assert_array_equal(cell, image_files.to_uint8(np.full((8, 8, 1), label / 10)))
  # Generation without explicit conditions (digits metrics, FID of an upscaler) as well.
  images, labels = gen.generate(exp, {}, num_images=5, num_steps=1, cfg_scale=None)
  np.testing.assert_array_equal(labels, LABELS)
  np.testing.assert_allclose(images[:, 0, 0, 0], np.asarray(LABELS) / 10, atol=1e-6)



def test_comparison_strip_shows_the_crops_bicubic_gets_most_wrong(monkeypatch):
  exp = stub_exp(to_label_value)
  examples = _examples(LABELS)
  # Bicubic errors per crop: crops 1 and 3 the largest (the others exact).
  examples["cond_image"] = examples["image"].copy()
  examples["cond_image"][1] += 0.5
  examples["cond_image"][3] += 0.2
  monkeypatch.setattr(conditions, "held_out_examples", lambda config, n, split="test": {
      k: v[:n] for k, v in examples.items()})
  strip = sr.comparison_strip(exp, {}, steps=[1], num_images=2)
  for row, i in enumerate((1, 3)):  # In the split's order.
    hr_cell = strip[1 + row * 9:1 + row * 9 + 8, 1 + 3 * 9:1 + 3 * 9 + 8]
    np.testing.assert_array_equal(hr_cell, image_files.to_uint8(examples["image"][i]))

def test_super_resolve_uses_one_label_for_every_tile():
  exp = stub_exp(to_label_value)
  lr_up = np.random.default_rng(1).uniform(-1, 1, (13, 21, 1)).astype(np.float32)
  assert len(tiling.split_tiles(lr_up, 8, 2)[0]) > 1
  # Default: the null label (an image of unknown class), on every tile.
  out = sr.super_resolve_image(exp, {}, lr_up, num_steps=1, batch_size=4)
  np.testing.assert_allclose(out, -0.5, atol=1e-6)
  out = sr.super_resolve_image(exp, {}, lr_up, num_steps=1, batch_size=4, label=3)
  np.testing.assert_allclose(out, 0.3, atol=1e-6)


def pointwise(params, x, t, level, cond, train, rngs):
  """A velocity that is a fixed function of each pixel's own values: tiling must not show."""
  del params, level, train, rngs
  return jnp.tanh(x) * cond["cond_image"] - 0.5 * x + t.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("objective,steps", [("naive", 3), ("consistency", 3)])
def test_tiled_output_equals_the_untiled_output(objective, steps):
  """One noise image per output image, cropped per tile (and blended every step): a 12x12
  image sampled in 8x8 tiles is the image sampled whole by a 12x12 model. With the consistency
  sampler the fresh noise of every step is one image too."""
  lr_up = np.random.default_rng(2).uniform(-1, 1, (12, 12, 1)).astype(np.float32)
  tiled_exp, whole_exp = (stub_exp(pointwise, size=s, objective=objective) for s in (8, 12))
  assert len(tiling.split_tiles(lr_up, 8, 2)[0]) == 4
  tiled = sr.super_resolve_image(tiled_exp, {}, lr_up, num_steps=steps, seed=5, batch_size=3)
  whole = sr.super_resolve_image(whole_exp, {}, lr_up, num_steps=steps, seed=5, batch_size=3)
  assert np.abs(whole).max() > 0.2 and np.std(whole) > 0.1
  np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
  # A tile-sized image is image 0 of `generate` with the same seed (same noise, same label).
  cond = conditions.sample_cond(whole_exp, 1, examples={"cond_image": lr_up[None]})
  images, _ = gen.generate(whole_exp, {}, num_images=1, num_steps=steps, cfg_scale=None, seed=5,
                           cond=cond)
  np.testing.assert_allclose(whole, np.clip(images[0], -1, 1), rtol=1e-5, atol=1e-5)


def test_overlapping_tiles_see_the_same_noise():
  seen = []

  def record(params, x, t, level, cond, train, rngs):
    jax.debug.callback(lambda xx, tt: seen.append((np.asarray(xx), np.asarray(tt))), x, t)
    return jnp.zeros_like(x)

  exp = stub_exp(record)
  lr_up = np.zeros((13, 20, 1), np.float32)
  sr.super_resolve_image(exp, {}, lr_up, num_steps=1, seed=3, batch_size=4, overlap=3)
  _, positions = tiling.split_tiles(lr_up, 8, 3)
  x0 = np.concatenate([x for x, t in seen if t[0] == 0])[:len(positions)]
  assert len(x0) == len(positions) > 2 and np.std(x0) > 0.5  # noise, one row per tile
  canvas = np.full((13, 20, 1), np.nan, np.float32)
  overlaps = 0
  for tile, (y, x) in zip(x0, positions):
    window = canvas[y:y + 8, x:x + 8]
    seen_before = ~np.isnan(window)
    overlaps += int(seen_before.sum())
    np.testing.assert_array_equal(tile[seen_before], window[seen_before])
    canvas[y:y + 8, x:x + 8] = tile
  assert overlaps > 20


def test_latent_tiles_are_encoded_sampled_as_one_canvas_and_decoded():
  """In latent space (the tiny random VAE, factor 2) a tile-sized image is image 0 of
  `generate`, decoded; an image of odd size comes back at its size."""
  from shortcut_jax import latents as latents_lib
  config = digits_configs.digits_config("smoke", data__low_res_factor=2, data__latents="online",
                                        vae__random_init=True)
  vae = latents_lib.vae_from_config(config)
  shape = tuple(vae.latent_shape((8, 8, 3)))
  exp = stub_exp(pointwise)
  exp.config, exp.image_shape = config, shape
  exp.to_images = lambda x: latents_lib.to_images(config, x)
  lr_up = np.random.default_rng(3).uniform(-1, 1, (8, 8, 3)).astype(np.float32)
  one = sr.super_resolve_image(exp, {}, lr_up, num_steps=2, seed=1, batch_size=2)
  cond = conditions.sample_cond(exp, 1, examples={"cond_image": lr_up[None]})
  images, _ = gen.generate(exp, {}, num_images=1, num_steps=2, cfg_scale=None, seed=1, cond=cond)
  np.testing.assert_allclose(one, np.clip(images[0], -1, 1), rtol=1e-5, atol=1e-5)
  big = sr.super_resolve_image(exp, {}, np.resize(lr_up, (13, 11, 3)), num_steps=2, seed=1,
                               batch_size=2)
  assert big.shape == (13, 11, 3) and np.all(np.isfinite(big)) and np.std(big) > 0.01


def test_gain_by_detail_groups_crops_by_bicubic_psnr():
  psnr = {"bicubic": np.array([40.0, 20.0, 30.0, 50.0]), "1": np.array([39.0, 21.0, 30.5, 49.0])}
  groups = sr.gain_by_detail(psnr, parts=2)
  # Most detailed first: crops 1 and 2 (bicubic 20, 30), then 0 and 3 (40, 50).
  assert [g["crops"] for g in groups] == [2, 2]
  assert groups[0]["bicubic_psnr_rgb"] == 25.0 and groups[1]["bicubic_psnr_rgb"] == 45.0
  assert groups[0]["gain"]["1"] == pytest.approx(0.75) and groups[1]["gain"]["1"] == -1.0
