"""The larger super-resolution datasets on stand-ins the tests make: `photos_large` from a folder
(and its packaged allow-list), and DIV2K in the layout of its archives through TFDS's builder."""

import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from shortcut_jax import tiling
from shortcut_jax.data import catalog
from shortcut_jax.data import errors
from shortcut_jax.data import low_res
from shortcut_jax.data import pipeline
from shortcut_jax.data import prepare
from shortcut_jax.data.builders import div2k
from shortcut_jax.data.builders import photos_large


def _config(name, data_dir, folder=None, image_size=16, factor=4):
  return ml_collections.ConfigDict(dict(name=name, image_size=image_size, num_classes=1,
                                        data_dir=data_dir, folder=folder,
                                        low_res_factor=factor))


def _photo(seed, height, width):
  """A textured RGB image (smooth noise at several scales: no crop of it is flat)."""
  rng = np.random.default_rng(seed)
  out = np.zeros((height, width, 3))
  for scale in (4, 16, 64):
    coarse = rng.uniform(0, 255, (height // scale + 2, width // scale + 2, 3)).astype(np.uint8)
    out += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), float) / 3
  return out.astype(np.uint8)


def _write(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


# --- photos_large ------------------------------------------------------------------------


def test_packaged_allow_list_is_consistent():
  names = [p.name for p in photos_large.PACKAGED]
  assert len(names) == len(set(names)) == 37
  assert set(photos_large.TEST_PHOTOS) <= set(names)
  assert {p.package for p in photos_large.PACKAGED} == set(photos_large.PACKAGES)
  assert all(p.author and p.licence for p in photos_large.PACKAGED)


def test_folder_photos_split_by_photo_and_crops_are_windows(tmp_path):
  folder = tmp_path / "photos"
  shapes = [(300, 280), (280, 320), (290, 300), (300, 300), (260, 270), (310, 260), (280, 290)]
  for i, (h, w) in enumerate(shapes):
    _write(str(folder / f"p{i}.png"), _photo(i, h, w))
  builder = catalog.get_builder(_config("photos_large", str(tmp_path / "tfds"), str(folder)))
  rows = {split: list(tfds.as_numpy(builder.as_dataset(split=split)))
          for split in ("train", "test")}
  photos = {split: {r["photo"].decode() for r in rs} for split, rs in rows.items()}
  # Every 6th photograph by sorted name is held out; no photograph is in both splits.
  assert photos["test"] == {"p5.png"} and photos["train"] == {f"p{i}.png" for i in (0, 1, 2, 3, 4, 6)}
  # Each crop is a 128x128 window of the photograph shrunk by 2 (PIL bicubic, recomputed here),
  # at a position of the overlapping grid.
  builder2 = photos_large.make_builder(str(folder), str(tmp_path / "tfds"))
  assert builder2.info.config_name == builder.info.config_name  # Unchanged folder: same build.
  for split in ("train", "test"):
    for row in rows[split][:4]:
      name = row["photo"].decode()
      h, w = shapes[int(name[1])]
      image = np.asarray(Image.open(folder / name).resize((round(w / 2), round(h / 2)),
                                                          Image.BICUBIC))
      ys = tiling.tile_positions(image.shape[0], 128, photos_large.OVERLAP)
      xs = tiling.tile_positions(image.shape[1], 128, photos_large.OVERLAP)
      assert any(np.array_equal(image[y:y + 128, x:x + 128], row["image"])
                 for y in ys for x in xs)
  assert builder.info.metadata["photos"]["p5.png"]["split"] == "test"
  # SR batches come from it like from `photos`.
  batch = next(pipeline.make_dataset(_config("photos_large", str(tmp_path / "tfds"), str(folder)),
                                     split="test", global_batch_size=2, seed=0, train=False,
                                     process_index=0, process_count=1))
  assert batch["image"].shape == (2, 16, 16, 3) and batch["cond_image"].shape == (2, 16, 16, 3)


def test_folder_with_train_and_test_subfolders(tmp_path):
  folder = tmp_path / "photos"
  _write(str(folder / "train" / "a.png"), _photo(0, 260, 260))
  _write(str(folder / "train" / "b.jpg"), _photo(1, 270, 260))
  _write(str(folder / "test" / "c.png"), _photo(2, 260, 280))
  # As `python -m shortcut_jax.data.prepare --dataset photos_large --photos_dir DIR` builds it.
  builder = prepare.prepare("photos_large", data_dir=str(tmp_path / "tfds"),
                            photos_dir=str(folder))
  assert builder.is_prepared()
  with pytest.raises(ValueError, match="--photos_dir is for --dataset photos_large only"):
    prepare.prepare("digits", data_dir=str(tmp_path / "tfds"), photos_dir=str(folder))
  test = {r["photo"].decode() for r in tfds.as_numpy(builder.as_dataset(split="test"))}
  train = {r["photo"].decode() for r in tfds.as_numpy(builder.as_dataset(split="train"))}
  assert test == {"test/c.png"} and train == {"train/a.png", "train/b.jpg"}


def test_photos_large_errors_say_what_to_do(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    photos_large.make_builder(str(tmp_path / "nothing"), str(tmp_path))
  few = tmp_path / "few"
  for i in range(2):
    _write(str(few / f"{i}.png"), _photo(i, 260, 260))
  with pytest.raises(errors.DataNotPreparedError, match="no test photograph"):
    photos_large.make_builder(str(few), str(tmp_path))
  # Packaged photographs absent (a machine without the Debian packages).
  missing = [photos_large.Photo(p.name, str(tmp_path / "absent.jpg"), p.package, p.author,
                                p.licence) for p in photos_large.PACKAGED]
  monkeypatch.setattr(photos_large, "PACKAGED", tuple(missing))
  with pytest.raises(errors.DataNotPreparedError, match="mate-backgrounds.*\n.*--photos_dir|"
                     "apt-get"):
    catalog.get_builder(_config("photos_large", str(tmp_path / "tfds")))
  monkeypatch.setattr(photos_large.shutil, "which", lambda name: None)
  with pytest.raises(errors.DataNotPreparedError, match="apt-get is not available"):
    photos_large.install_packages()


# --- DIV2K -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def div2k_data(tmp_path_factory):
  """A DIV2K stand-in in the archives' layout, prepared through TFDS's builder."""
  root = tmp_path_factory.mktemp("div2k")
  manual = root / "manual"
  hr = {"train": {"0001": _photo(10, 72, 96), "0002": _photo(11, 80, 64)},
        "valid": {"0801": _photo(12, 68, 84)}}
  for split, images in hr.items():
    for stem, image in images.items():
      _write(str(manual / f"DIV2K_{split}_HR" / f"{stem}.png"), image)
      lr = np.asarray(Image.fromarray(image).resize((image.shape[1] // 4, image.shape[0] // 4)))
      _write(str(manual / f"DIV2K_{split}_LR_bicubic" / "X4" / f"{stem}x4.png"), lr)
  data_dir = str(root / "tfds")
  div2k.prepare(data_dir, str(manual))
  return data_dir, hr


def test_div2k_from_folder_is_tfds_own_dataset(div2k_data):
  data_dir, hr = div2k_data
  builder = tfds.builder(div2k.NAME, data_dir=data_dir)  # TFDS's own builder reads it.
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2,
                                                                         "validation": 1}
  (example,) = tfds.as_numpy(builder.as_dataset(split="validation"))
  np.testing.assert_array_equal(example["hr"], hr["valid"]["0801"])
  info = pipeline.dataset_info(_config("div2k", data_dir))
  assert info["num_examples"] == {"train": 2, "test": 1} and info["channels"] == 3


def test_div2k_batches_are_hr_crops_and_their_bicubic(div2k_data):
  data_dir, hr = div2k_data
  cfg = _config("div2k", data_dir, image_size=16, factor=4)
  (batch,) = list(pipeline.make_dataset(cfg, split="test", global_batch_size=1, seed=0,
                                        train=False, process_index=0, process_count=1))
  image = hr["valid"]["0801"].astype(np.float32) / 127.5 - 1
  y, x = (68 - 16) // 2, (84 - 16) // 2  # The central crop.
  np.testing.assert_allclose(batch["image"][0], image[y:y + 16, x:x + 16], atol=1e-6)
  np.testing.assert_allclose(batch["cond_image"][0], low_res.cond_image(batch["image"][0], 4),
                             atol=2e-3)
  train = next(pipeline.make_dataset(cfg, split="train", global_batch_size=8, seed=3,
                                     process_index=0, process_count=1))
  sources = [im.astype(np.float32) / 127.5 - 1 for im in hr["train"].values()]
  offsets = set()
  for crop in train["image"]:
    hits = [(i, y, x) for i, source in enumerate(sources) for flip in (False, True)
            for y in range(source.shape[0] - 15) for x in range(source.shape[1] - 15)
            if np.array_equal((source[:, ::-1] if flip else source)[y:y + 16, x:x + 16], crop)]
    assert hits, "a training crop is not a window of a DIV2K HR image"
    offsets.add(hits[0])
  assert len(offsets) > 4  # Random windows, not one fixed crop.


def test_div2k_errors_name_the_layout_and_the_command(tmp_path):
  with pytest.raises(errors.DataNotPreparedError, match="DIV2K_valid_LR_bicubic/X4"):
    div2k.prepare(str(tmp_path / "tfds"), str(tmp_path))
  with pytest.raises(errors.DataNotPreparedError, match="prepare --dataset div2k"):
    catalog.get_builder(_config("div2k", str(tmp_path / "empty")))
  with pytest.raises(ValueError, match="data.low_res_factor"):
    catalog.validate_data_config(_config("div2k", str(tmp_path), factor=0))
