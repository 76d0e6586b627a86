"""Tests of the TFDS builders and the input pipeline (`shortcut_jax.data`).

Every dataset is built into a pytest temporary data_dir; digits once per module.
"""

import dataclasses
import hashlib
import logging
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from shortcut_jax.data import catalog
from shortcut_jax.data import errors
from shortcut_jax.data import pipeline
from shortcut_jax.data import prepare as prepare_lib
from shortcut_jax.data.builders import digits as digits_lib


def _data_config(name="digits", image_size=16, num_classes=10, data_dir=None, folder=None):
  return ml_collections.ConfigDict(dict(name=name, image_size=image_size,
                                        num_classes=num_classes, data_dir=data_dir, folder=folder))


@pytest.fixture(scope="module")
def digits_config(tmp_path_factory):
  cfg = _data_config(data_dir=str(tmp_path_factory.mktemp("tfds")))
  catalog.get_builder(cfg)  # Builds once for the module.
  return cfg


def _row_hashes(images):
  return sorted(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images)


def _numpy_bilinear_2x(img8):
  """Bilinear ×2 upsampling with half-pixel centres and clamped edges (independent of PIL)."""
  src = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, 7)
  w = src - lo
  rows = img8[lo] * (1 - w)[:, None] + img8[hi] * w[:, None]
  return rows[:, lo] * (1 - w)[None] + rows[:, hi] * w[None]


# --- digits builder --------------------------------------------------------------------------


def test_digits_builder_content(digits_config):
  from sklearn.datasets import load_digits
  builder = catalog.get_builder(digits_config)
  splits = {}
  for split in ("train", "test"):
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    splits[split] = ds
    assert ds["image"].dtype == np.uint8 and ds["image"].shape[1:] == (16, 16, 1)
    assert set(ds["label"].tolist()) == set(range(10)), f"{split} misses classes"
  n_train, n_test = len(splits["train"]["label"]), len(splits["test"]["label"])
  assert n_train + n_test == 1797
  assert 0.08 < n_test / 1797 < 0.12

  # Every stored image is the upsampled version of exactly one sklearn image, with its label.
  sk = load_digits()
  reference = np.stack([_numpy_bilinear_2x(im * 255.0 / 16.0) for im in sk.images])
  stored = np.concatenate([splits[s]["image"][..., 0] for s in ("train", "test")]).astype(np.float64)
  labels = np.concatenate([splits[s]["label"] for s in ("train", "test")])
  a, b = stored.reshape(1797, -1), reference.reshape(1797, -1)
  dist = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
  match = dist.argmin(1)
  assert np.array_equal(labels, sk.target[match])
  for i in range(0, 1797, 97):
    corr = np.corrcoef(a[i], b[match[i]])[0, 1]
    assert corr > 0.99, corr
  assert np.abs(a - b[match]).max() <= 2.0  # Only rounding differs from the numpy resize.
  # The sklearn digits hold a few exact duplicates; the matching must still cover ~all of them.
  assert len(np.unique(match)) > 1790


def test_digits_split_is_fixed():
  labels = np.repeat(np.arange(10), 20)
  tr1, te1 = digits_lib.split_indices(labels)
  tr2, te2 = digits_lib.split_indices(labels)
  assert np.array_equal(te1, te2) and len(np.intersect1d(tr1, te1)) == 0
  assert np.array_equal(np.bincount(labels[te1]), np.full(10, 2))


# --- pipeline ----------------------------------------------------------------------------------


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batches_range_shape_and_seeds(digits_config):
  kw = dict(split="train", global_batch_size=32, process_index=0, process_count=1)
  a = _take(pipeline.make_dataset(digits_config, seed=0, **kw), 3)
  b = _take(pipeline.make_dataset(digits_config, seed=0, **kw), 3)
  c = _take(pipeline.make_dataset(digits_config, seed=1, **kw), 3)
  for batch in a:
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (32, 16, 16, 1)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert set(batch["label"].tolist()) <= set(range(10))
  assert a[0]["image"].min() == -1.0 and a[0]["image"].max() == 1.0  # uint8 0/255 → ±1.
  for x, y in zip(a, b):
    assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_processes_read_disjoint_slices(digits_config):
  def eval_images(index, count):
    it = pipeline.make_dataset(digits_config, split="train", global_batch_size=64 * count,
                               seed=0, train=False, process_index=index, process_count=count)
    return np.concatenate([b["image"] for b in it])

  whole = eval_images(0, 1)
  p0, p1 = eval_images(0, 2), eval_images(1, 2)
  assert len(whole) == 1618 and len(p0) + len(p1) == len(whole)
  assert _row_hashes(np.concatenate([p0, p1])) == _row_hashes(whole)
  # Slices, not a reshuffle: no image of process 0 reappears in process 1 (beyond duplicates
  # that digits itself holds).
  overlap = set(_row_hashes(p0)) & set(_row_hashes(p1))
  assert len(overlap) <= len(whole) - len(set(_row_hashes(whole)))

  # Training batches of process 1: half the global batch, and one epoch of its stream is a
  # permutation of its own slice.
  it = pipeline.make_dataset(digits_config, split="train", global_batch_size=2 * 29, seed=3,
                             process_index=1, process_count=2)
  batches = _take(it, -(-len(p1) // 29))
  assert batches[0]["image"].shape == (29, 16, 16, 1)
  stream = np.concatenate([b["image"] for b in batches])[:len(p1)]
  assert _row_hashes(stream) == _row_hashes(p1)


@pytest.mark.parametrize("flip", [False, True])
def test_resumption_matches_uninterrupted_run(digits_config, monkeypatch, flip):
  if flip:  # Exercises the stateless flips (ImageNet's setting) on digits.
    monkeypatch.setitem(catalog.SPECS, "digits",
                        dataclasses.replace(catalog.SPECS["digits"], random_flip=True))
  kw = dict(split="train", global_batch_size=128, seed=5, process_index=0, process_count=1)
  full = _take(pipeline.make_dataset(digits_config, **kw), 28)  # 1618 per epoch: crosses two.
  for k in (11, 12, 25):
    resumed = _take(pipeline.make_dataset(digits_config, start_step=k, **kw), 3)
    for i, batch in enumerate(resumed):
      assert np.array_equal(batch["image"], full[k + i]["image"]), (k, i)
      assert np.array_equal(batch["label"], full[k + i]["label"]), (k, i)
  # Each epoch is the same examples in a new order.
  labels = np.concatenate([b["label"] for b in full])
  assert np.array_equal(np.sort(labels[:1618]), np.sort(labels[1618:3236]))
  assert not np.array_equal(labels[:1618], labels[1618:3236])
  if flip:
    monkeypatch.undo()
    plain = _take(pipeline.make_dataset(digits_config, **kw), 1)[0]["image"]
    flipped = full[0]["image"]
    same = [np.array_equal(x, y) for x, y in zip(plain, flipped)]
    mirrored = [np.array_equal(x[:, ::-1], y) for x, y in zip(plain, flipped)]
    assert all(s or m for s, m in zip(same, mirrored)) and 20 < sum(mirrored) < 108


def test_eval_iterator_partial_and_padded(digits_config):
  kw = dict(split="test", global_batch_size=64, seed=0, train=False, process_index=0,
            process_count=1)
  batches = list(pipeline.make_dataset(digits_config, **kw))
  assert [len(b["label"]) for b in batches] == [64, 64, 51]
  padded = list(pipeline.make_dataset(digits_config, pad_remainder=True, **kw))
  assert [len(b["label"]) for b in padded] == [64, 64, 64]
  assert padded[-1]["mask"].sum() == 51 and not padded[-1]["mask"][51:].any()
  assert np.array_equal(padded[-1]["image"][:51], batches[-1]["image"])
  again = list(pipeline.make_dataset(digits_config, **kw))
  assert np.array_equal(again[0]["image"], batches[0]["image"])  # Unshuffled, deterministic.


def test_dataset_info(digits_config, tmp_path):
  info = pipeline.dataset_info(digits_config)
  assert info["channels"] == 1 and info["num_classes"] == 10 and info["image_size"] == 16
  assert info["num_examples"] == {"train": 1618, "test": 179}
  missing = pipeline.dataset_info(_data_config("celebahq256", 256, 1, str(tmp_path)))
  assert missing["prepared"] is False and missing["channels"] == 3


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"data\.name.*celebahq256.*digits"):
    catalog.validate_data_config(_data_config(name="mnist"))
  with pytest.raises(ValueError, match=r"data\.image_size=32"):
    catalog.validate_data_config(_data_config(image_size=32))
  with pytest.raises(ValueError, match=r"data\.num_classes must be 1000"):
    catalog.validate_data_config(_data_config("imagenet256", 256, 10))
  with pytest.raises(ValueError, match=r"data\.folder"):
    catalog.validate_data_config(_data_config("image_folder", 32, 1))


# --- image folders -------------------------------------------------------------------------


def _write_png(path, color, size=(20, 12)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(path)


def test_image_folder_labels_and_corrupt_file(tmp_path, caplog):
  root = tmp_path / "pets"
  for i in range(10):
    _write_png(str(root / "cat" / f"{i:02d}.png"), (250, 10, 10))
    _write_png(str(root / "dog" / f"{i:02d}.jpg"), (10, 10, 250))
  (root / "dog" / "05_bad.png").write_bytes(np.random.RandomState(0).bytes(300))
  cfg = _data_config("image_folder", 8, 2, str(tmp_path / "tfds"), str(root))
  with caplog.at_level(logging.WARNING):
    info = pipeline.dataset_info(cfg)
  assert "skipped 1 unreadable of 19 images of split 'train'" in caplog.text  # 10 cat + 9 dog.
  assert info["num_examples"] == {"train": 18, "test": 2} and info["num_classes"] == 2
  for split in ("train", "test"):
    batches = list(pipeline.make_dataset(cfg, split=split, global_batch_size=8, seed=0,
                                         train=False, process_index=0, process_count=1))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert images.shape[1:] == (8, 8, 3)
    red = images[..., 0].mean((1, 2)) > images[..., 2].mean((1, 2))
    assert np.array_equal(labels == 0, red)  # 'cat' (sorted first) is red.
    assert set(labels.tolist()) == {0, 1}
  with pytest.raises(ValueError, match=r"data\.num_classes must be 2"):
    catalog.get_builder(_data_config("image_folder", 8, 3, str(tmp_path / "tfds"), str(root)))


def test_image_folder_without_classes(tmp_path):
  root = tmp_path / "flat"
  for i in range(4):
    _write_png(str(root / f"{i}.png"), (40 * i, 0, 0), size=(30, 10))
  cfg = _data_config("image_folder", 4, 1, str(tmp_path / "tfds"), str(root))
  batch = next(pipeline.make_dataset(cfg, split="train", global_batch_size=4, seed=0,
                                     process_index=0, process_count=1))
  assert batch["image"].shape == (4, 4, 4, 3) and not batch["label"].any()
  assert pipeline.dataset_info(cfg)["num_examples"] == {"train": 4}


# --- datasets with manual data ----------------------------------------------------------------


@pytest.mark.parametrize("name,num_classes", [("celebahq256", 1), ("imagenet256", 1000),
                                              ("lsun_church", 1)])
def test_missing_manual_data_names_prepare_command(tmp_path, name, num_classes):
  cfg = _data_config(name, 256, num_classes, str(tmp_path))
  with pytest.raises(errors.DataNotPreparedError) as e:
    pipeline.make_dataset(cfg, split="train", global_batch_size=8, seed=0)
  msg = str(e.value)
  assert f"python -m shortcut_jax.data.prepare --dataset {name} --manual_dir" in msg
  assert f"--data_dir {tmp_path}" in msg and "download" in msg.lower()


def test_prepare_rejects_wrong_layout(tmp_path):
  with pytest.raises(errors.DataNotPreparedError, match=r"train.*does not exist"):
    prepare_lib.prepare("lsun_church", manual_dir=str(tmp_path / "empty"),
                        data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="--manual_dir is required"):
    prepare_lib.prepare("imagenet256", data_dir=str(tmp_path / "tfds"))


def test_celebahq_prepared_from_manual_folder(tmp_path, caplog):
  manual_dir = tmp_path / "celebahq"
  # 300×260 images: a white centre square of 260 with black 20-pixel bands left and right,
  # so a correct centre crop leaves pure white and a plain resize would not.
  img = np.zeros((260, 300, 3), np.uint8)
  img[:, 20:280] = 255
  for i in range(10):
    os.makedirs(manual_dir / "celeba_hq_256", exist_ok=True)
    Image.fromarray(img).save(manual_dir / "celeba_hq_256" / f"{i:05d}.png")
  # Sorted into the train part (the last 10% of names form the test split).
  (manual_dir / "celeba_hq_256" / "00003_bad.png").write_bytes(b"not a png")
  data_dir = str(tmp_path / "tfds")
  with caplog.at_level(logging.WARNING):
    prepare_lib.prepare("celebahq256", manual_dir=str(manual_dir), data_dir=data_dir)
  assert "skipped 1 unreadable of 10" in caplog.text

  cfg = _data_config("celebahq256", 256, 1, data_dir)
  info = pipeline.dataset_info(cfg)
  assert info["prepared"] and info["num_examples"] == {"train": 9, "test": 1}
  batches = list(pipeline.make_dataset(cfg, split="train", global_batch_size=4, seed=0,
                                       train=False, process_index=0, process_count=1))
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (9, 256, 256, 3) and np.all(images == 1.0)
  small = next(pipeline.make_dataset(_data_config("celebahq256", 64, 1, data_dir), split="test",
                                     global_batch_size=1, seed=0, process_index=0,
                                     process_count=1))
  assert small["image"].shape == (1, 64, 64, 3) and np.allclose(small["image"], 1.0)
