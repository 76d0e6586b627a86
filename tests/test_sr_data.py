"""Tests of the super-resolution data: LR construction, the `photos` dataset, SR batches.

The photos dataset is built once per module into a pytest temporary data_dir.
"""

import dataclasses

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from shortcut_jax import tiling
from shortcut_jax.data import catalog
from shortcut_jax.data import low_res
from shortcut_jax.data import pipeline
from shortcut_jax.data.builders import photos as photos_lib


def _config(data_dir, image_size=32, low_res_factor=4, name="photos"):
  return ml_collections.ConfigDict(dict(name=name, image_size=image_size, num_classes=1,
                                        data_dir=data_dir, folder=None,
                                        low_res_factor=low_res_factor))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  catalog.get_builder(_config(path))  # Builds once for the module.
  return path


def _take(it, n):
  return [next(it) for _ in range(n)]


def _pil_resize(channel, size):
  """PIL's bicubic resize of one float channel (antialiased when shrinking, Keys a = -0.5)."""
  img = Image.fromarray(np.asarray(channel, np.float32), mode="F")
  return np.asarray(img.resize(size, Image.BICUBIC))


# --- LR construction ---------------------------------------------------------------------


def _smooth_image(height, width, channels=3):
  y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
  planes = [np.sin(2 * np.pi * (y + 0.5 * x + c / 3)) * 0.8 for c in range(channels)]
  return np.stack(planes, -1).astype(np.float32)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_low_res_sizes_range_and_tf_numpy_agree(factor):
  rng = np.random.RandomState(factor)
  hr = rng.uniform(-1, 1, (2, 48, 32, 3)).astype(np.float32)
  hr[:, :8] = np.sign(hr[:, :8])  # Hard ±1 edges: bicubic overshoots there; the clip must hold.
  lr = low_res.make_low_res(hr, factor)
  up = low_res.upsample(lr, factor)
  assert lr.shape == (2, 48 // factor, 32 // factor, 3) and lr.dtype == np.float32
  assert up.shape == hr.shape and up.dtype == np.float32
  for x in (lr, up):
    assert x.min() >= -1.0 and x.max() <= 1.0
  lr_tf = low_res.make_low_res_tf(tf.constant(hr), factor).numpy()
  up_tf = low_res.upsample_tf(tf.constant(lr_tf), factor).numpy()
  np.testing.assert_allclose(lr, lr_tf, atol=1e-5)
  np.testing.assert_allclose(up, up_tf, atol=1e-5)
  np.testing.assert_allclose(low_res.cond_image(hr, factor), up, atol=1e-6)
  # Unbatched images give the same result as a batch of one.
  np.testing.assert_allclose(low_res.make_low_res(hr[0], factor), lr[0], atol=1e-6)


def test_low_res_is_pil_bicubic():
  # An independent implementation of the same degradation: PIL's antialiased bicubic
  # (the MATLAB `imresize` kernel), channel by channel, then clipped.
  hr = _smooth_image(40, 24) + np.random.RandomState(0).normal(0, 0.05, (40, 24, 3))
  hr = np.clip(hr, -1, 1).astype(np.float32)
  lr = low_res.make_low_res(hr, 4)
  expected = np.stack([_pil_resize(hr[..., c], (6, 10)) for c in range(3)], -1)
  np.testing.assert_allclose(lr, np.clip(expected, -1, 1), atol=1e-5)
  up = low_res.upsample(lr, 4)
  expected_up = np.stack([_pil_resize(lr[..., c], (24, 40)) for c in range(3)], -1)
  np.testing.assert_allclose(up, np.clip(expected_up, -1, 1), atol=1e-5)


def test_checkerboard_vanishes_smooth_image_survives():
  size, factor = 64, 4
  y, x = np.mgrid[:size, :size]
  checker = np.where((y + x) % 2, 0.9, -0.9).astype(np.float32)[..., None].repeat(3, -1)
  lr_checker = low_res.make_low_res(checker, factor)
  # Without the antialiasing filter, sampling a period-2 pattern would keep all its contrast.
  assert lr_checker.std() < 0.02 * checker.std()
  assert low_res.cond_image(checker, factor).std() < 0.02 * checker.std()
  smooth = _smooth_image(size, size)
  cond = low_res.cond_image(smooth, factor)
  error = np.abs(cond - smooth)
  # Close everywhere; the edges, where the kernel is cut off, deviate the most.
  assert error[8:-8, 8:-8].max() < 0.05 and error.mean() < 0.03
  assert cond.std() > 0.95 * smooth.std()


def test_low_res_rejects_indivisible_sizes_and_mod_crop_fixes_them():
  image = np.zeros((30, 21, 3), np.float32)
  with pytest.raises(ValueError, match="divisible"):
    low_res.make_low_res(image, 4)
  with pytest.raises(ValueError, match="divisible"):
    low_res.make_low_res_tf(tf.constant(image), 4)
  assert low_res.mod_crop(image, 4).shape == (28, 20, 3)
  assert low_res.make_low_res(low_res.mod_crop(image, 4), 4).shape == (7, 5, 3)


def test_low_res_under_jit():
  import jax
  hr = _smooth_image(32, 32)
  jitted = jax.jit(low_res.cond_image, static_argnums=1)
  np.testing.assert_allclose(np.asarray(jitted(hr, 2)), low_res.cond_image(hr, 2), atol=1e-6)


# --- photos dataset ------------------------------------------------------------------------


def test_photos_builder_content_and_split(data_dir):
  builder = catalog.get_builder(_config(data_dir))
  seen = {}
  for split in ("train", "test"):
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    assert ds["image"].dtype == np.uint8
    assert ds["image"].shape[1:] == (photos_lib.CROP_SIZE, photos_lib.CROP_SIZE, 3)
    assert (ds["label"] == 0).all()
    seen[split] = ds
  names = {s: {p.decode() for p in seen[s]["photo"]} for s in seen}
  assert names["test"] == set(photos_lib.TEST_PHOTOS)
  assert not names["train"] & names["test"]
  assert names["train"] | names["test"] == {n for n, _ in photos_lib.PHOTOS}
  total = sum(len(seen[s]["label"]) for s in seen)
  assert 100 <= total <= 400, total  # Small enough to build in seconds.
  # Every crop is an exact window of its (shrunk) photograph.
  ds = builder.as_dataset(split="test")
  sources = {n: photos_lib.shrink(photos_lib.load_photo(n, lib)) for n, lib in photos_lib.PHOTOS
             if n in photos_lib.TEST_PHOTOS}
  checked = 0
  for example in tfds.as_numpy(ds.take(12)):
    crop, name = example["image"], example["photo"].decode()
    source = sources[name]
    ys, xs = np.nonzero(np.all(source[:-127, :-127] == crop[0, 0], -1))
    found = any(np.array_equal(source[y:y + 128, x:x + 128], crop) for y, x in zip(ys, xs))
    assert found, name
    checked += 1
  assert checked == 12


def test_photos_crops_are_deterministic_and_not_flat():
  image = photos_lib.shrink(photos_lib.load_photo("retina", "skimage"))
  assert min(image.shape[:2]) == photos_lib.MAX_SHORT_SIDE
  a = list(photos_lib.crops(image))
  b = list(photos_lib.crops(image))
  assert [p for p, _ in a] == [p for p, _ in b]
  grid = len(tiling.tile_positions(image.shape[0], 128, 128 - photos_lib.STRIDE)) ** 2
  assert 0 < len(a) < grid  # retina's black corners are dropped.
  assert all(c.mean(-1).std() >= photos_lib.MIN_CROP_STD for _, c in a)
  grey = photos_lib.load_photo("camera", "skimage")
  assert grey.shape == (512, 512, 3) and np.array_equal(grey[..., 0], grey[..., 2])


def test_photos_config_checks():
  catalog.validate_data_config(_config(None, image_size=128))
  with pytest.raises(ValueError, match=r"data\.image_size=256"):
    catalog.validate_data_config(_config(None, image_size=256))
  with pytest.raises(ValueError, match=r"divisible by data\.low_res_factor"):
    catalog.validate_data_config(_config(None, image_size=36, low_res_factor=8))


# --- SR batches from the pipeline ------------------------------------------------------------


def test_sr_batches_shapes_and_cond_image(data_dir):
  cfg = _config(data_dir, image_size=32, low_res_factor=4)
  it = pipeline.make_dataset(cfg, split="train", global_batch_size=16, seed=0, process_index=0,
                             process_count=1)
  for batch in _take(it, 2):
    assert set(batch) == {"image", "label", "cond_image"}
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["cond_image"].shape == (16, 32, 32, 3)
    assert batch["cond_image"].dtype == np.float32
    assert (batch["label"] == 0).all()
    assert batch["cond_image"].min() >= -1 and batch["cond_image"].max() <= 1
    np.testing.assert_allclose(batch["cond_image"],
                               low_res.upsample(low_res.make_low_res(batch["image"], 4), 4),
                               atol=1e-5)
    # The condition is blurry, not a copy of the target.
    assert np.abs(batch["cond_image"] - batch["image"]).mean() > 0.01
  info = pipeline.dataset_info(cfg)
  assert info["low_res_factor"] == 4 and info["channels"] == 3 and info["num_classes"] == 1
  assert info["num_examples"]["train"] > 0 and info["num_examples"]["test"] > 0


def _stored_images(data_dir, split):
  builder = catalog.get_builder(_config(data_dir))
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))["image"]


def test_training_crops_are_random_windows_of_stored_images(data_dir):
  cfg = _config(data_dir, image_size=32, low_res_factor=2)
  stored = _stored_images(data_dir, "train").astype(np.float32) / 127.5 - 1
  batch = _take(pipeline.make_dataset(cfg, split="train", global_batch_size=24, seed=1,
                                      process_index=0, process_count=1), 1)[0]
  offsets = []
  for hr in batch["image"]:
    hit = None
    for image in stored:
      for candidate in (image, image[:, ::-1]):
        # Locate the crop by its first pixel row, then confirm the whole window.
        ys, xs = np.nonzero(np.all(np.abs(candidate[:97, :97] - hr[0, 0]) < 1e-6, -1))
        for y, x in zip(ys, xs):
          if np.array_equal(candidate[y:y + 32, x:x + 32], hr):
            hit = (y, x)
            break
        if hit:
          break
      if hit:
        break
    assert hit is not None
    offsets.append(hit)
  assert len(set(offsets)) > len(offsets) // 2  # Random offsets, not always the centre.


@pytest.mark.parametrize("flip", [True, False])
def test_sr_resumption_matches_uninterrupted_run(data_dir, monkeypatch, flip):
  if not flip:
    monkeypatch.setitem(catalog.SPECS, "photos",
                        dataclasses.replace(catalog.SPECS["photos"], random_flip=False))
  cfg = _config(data_dir, image_size=32, low_res_factor=4)
  kw = dict(split="train", global_batch_size=64, seed=7, process_index=0, process_count=1)
  n_train = pipeline.dataset_info(cfg)["num_examples"]["train"]
  steps = -(-2 * n_train // 64) + 1  # Crosses two epoch boundaries.
  full = _take(pipeline.make_dataset(cfg, **kw), steps)
  for k in (1, steps // 2, steps - 2):
    resumed = _take(pipeline.make_dataset(cfg, start_step=k, **kw), 2)
    for i, batch in enumerate(resumed):
      for key in ("image", "cond_image", "label"):
        assert np.array_equal(batch[key], full[k + i][key]), (k, i, key)
  # The same stored crop gets a new window in the next epoch (crops are seeded by position).
  first = np.concatenate([b["image"] for b in full])[:n_train]
  second = np.concatenate([b["image"] for b in full])[n_train:2 * n_train]
  assert not np.array_equal(np.sort(first.reshape(n_train, -1), 0),
                            np.sort(second.reshape(n_train, -1), 0))


def test_eval_gives_centre_crops_deterministically(data_dir):
  cfg = _config(data_dir, image_size=64, low_res_factor=8)
  kw = dict(split="test", global_batch_size=16, seed=0, train=False, process_index=0,
            process_count=1)
  a = list(pipeline.make_dataset(cfg, **kw))
  b = list(pipeline.make_dataset(cfg, seed=3, **{k: v for k, v in kw.items() if k != "seed"}))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in ("image", "cond_image"):
      assert np.array_equal(x[key], y[key])
  images = np.concatenate([x["image"] for x in a])
  stored = _stored_images(data_dir, "test")
  assert len(images) == len(stored)
  np.testing.assert_array_equal(images, stored[:, 32:96, 32:96].astype(np.float32) / 127.5 - 1)
  cond = np.concatenate([x["cond_image"] for x in a])
  np.testing.assert_allclose(cond, low_res.cond_image(images, 8), atol=1e-5)
  # Padded evaluation: the zero padding includes cond_image; the mask marks it.
  padded = list(pipeline.make_dataset(cfg, pad_remainder=True, **kw))
  assert all(p["cond_image"].shape == (16, 64, 64, 3) for p in padded)
  assert padded[-1]["mask"].sum() == len(images) - 16 * (len(padded) - 1)
  assert not padded[-1]["cond_image"][~padded[-1]["mask"]].any()


def test_no_low_res_factor_keeps_the_resize(data_dir):
  cfg = _config(data_dir, image_size=32, low_res_factor=0)
  batch = next(pipeline.make_dataset(cfg, split="test", global_batch_size=8, seed=0,
                                     train=False, process_index=0, process_count=1))
  assert set(batch) == {"image", "label"} and batch["image"].shape == (8, 32, 32, 3)
  stored = _stored_images(data_dir, "test")[:8].astype(np.float32)
  expected = tf.image.resize(stored, (32, 32), "bilinear", antialias=True).numpy() / 127.5 - 1
  np.testing.assert_allclose(batch["image"], expected, atol=1e-5)
  assert pipeline.dataset_info(cfg)["low_res_factor"] == 0


def test_random_rot90_turns_training_crops_only(data_dir, monkeypatch):
  monkeypatch.setitem(catalog.SPECS, "photos",
                      dataclasses.replace(catalog.SPECS["photos"], random_flip=False))
  plain = _config(data_dir, image_size=128, low_res_factor=4)  # The whole stored crop.
  turned = ml_collections.ConfigDict(dict(plain, random_rot90=True))
  kw = dict(split="train", global_batch_size=32, seed=3, process_index=0, process_count=1)
  a, b = next(pipeline.make_dataset(plain, **kw)), next(pipeline.make_dataset(turned, **kw))
  turns = []
  for x, y in zip(a["image"], b["image"]):
    hits = [k for k in range(4) if np.array_equal(np.rot90(x, k), y)]
    assert hits, "a training image is not a quarter turn of the same example"
    turns.append(hits[0])
  assert set(turns) == {0, 1, 2, 3}
  # The condition is made from the turned image.
  np.testing.assert_allclose(b["cond_image"], low_res.cond_image(b["image"], 4), atol=1e-5)
  np.testing.assert_array_equal(b["image"], next(pipeline.make_dataset(turned, **kw))["image"])
  ev = dict(kw, split="test", train=False)
  np.testing.assert_array_equal(next(pipeline.make_dataset(plain, **ev))["image"],
                                next(pipeline.make_dataset(turned, **ev))["image"])
