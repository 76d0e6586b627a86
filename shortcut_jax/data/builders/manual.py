"""TFDS builders for the paper's datasets, whose files the user downloads by hand.

`celebahq256`, `imagenet256` (ImageNet-2012 at 256×256) and `lsun_church` (LSUN church
outdoor) cannot be fetched automatically (licences, sign-ups, or no stable URL). Each builder
documents in `MANUAL_DOWNLOAD_INSTRUCTIONS` what to download and the folder layout it reads;
`shortcut_jax.data.prepare` checks that layout and builds the TFDS dataset once:

    python -m shortcut_jax.data.prepare --dataset celebahq256 \
        --manual_dir /data/celebahq256 --data_dir ~/tensorflow_datasets

Every image is centre-cropped to a square and resized to 256×256 with an antialiased PIL
bicubic filter when the dataset is prepared (`images.center_crop_resize`), so training only
decodes. Unreadable files are skipped with one warning giving their count. Splits are always
named 'train' and 'test' so that the pipeline and the evaluators treat all datasets alike.

Remote folders: `--manual_dir gs://bucket/imagenet` is listed and read through
`shortcut_jax.storage` (each image downloaded once, while preparing); a remote `--data_dir` is
built in a local cache folder and uploaded (`base.make_builder` / `base.publish`).
"""

import os
from typing import Dict, Iterable, List, Tuple

import tensorflow_datasets as tfds

from shortcut_jax import storage
from shortcut_jax.data import errors
from shortcut_jax.data import images
from shortcut_jax.data.builders import base

IMAGE_SIZE = 256


class ManualImageBuilder(base.OfflineBuilder, skip_registration=True):
  """Shared logic: a layout check, then `(key, path, extra features)` items per split.

  Subclasses set the class attributes below and implement `check_layout` and `split_items`.
  """

  NUM_CLASSES = 1
  ENCODING = "png"  # How TFDS stores the 256×256 images ('png' lossless, 'jpeg' 4× smaller).
  DESCRIPTION = ""
  HOMEPAGE = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                         encoding_format=self.ENCODING),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  @classmethod
  def check_layout(cls, manual_dir: str) -> List[str]:
    """Problems with the folder layout in `manual_dir` (empty when it can be prepared)."""
    raise NotImplementedError

  @classmethod
  def split_items(cls, manual_dir: str) -> Dict[str, List[Tuple[str, str, dict]]]:
    """`{split: [(key, absolute path, extra features), ...]}` read from `manual_dir`."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    problems = self.check_layout(manual_dir)
    if problems:
      raise errors.DataNotPreparedError(layout_message(self.name, manual_dir, problems,
                                                       self.MANUAL_DOWNLOAD_INSTRUCTIONS))
    return {split: self._generate_examples(items, split)
            for split, items in self.split_items(manual_dir).items()}

  def _generate_examples(self, items: Iterable[Tuple[str, str, dict]], split: str):
    yield from images.read_images_skipping_bad(items, IMAGE_SIZE, "RGB",
                                               what=f"{self.name} {split!r} images")


def layout_message(name: str, manual_dir: str, problems: List[str], instructions: str) -> str:
  return (f"cannot prepare {name!r} from manual_dir {manual_dir!r}:\n  - " + "\n  - ".join(problems)
          + "\nExpected:\n" + instructions)


def _flat_folder_items(folder: str, prefix: str, label: int = 0):
  return [(f"{prefix}/{rel}", storage.join(folder, rel), {"label": label})
          for rel in images.list_images(folder)]


class Celebahq256(ManualImageBuilder, skip_registration=True):
  """CelebA-HQ (30,000 faces) at 256×256, unconditional (every label is 0).

  Split: the image files sorted by name; the last 10% (3,000 of 30,000) form 'test', the rest
  'train' (27,000/3,000 is the split most CelebA-HQ generative-model papers use).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Centre crop, bicubic resize to 256, PNG, last 10% as test."}
  NUM_CLASSES = 1
  ENCODING = "png"
  TEST_FRACTION = 0.1
  DESCRIPTION = "CelebA-HQ faces at 256x256 (unconditional)."
  HOMEPAGE = "https://github.com/tkarras/progressive_growing_of_gans"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the 30,000 CelebA-HQ images (any size >= 256, any format PIL reads) in one folder, at
its top or in sub-folders, e.g. the 256x256 release `celeba_hq_256/00000.jpg ...` (Kaggle
"celebahq-resized-256x256") or the 1024x1024 PNGs made by NVIDIA's dataset tool
(github.com/tkarras/progressive_growing_of_gans). Pass that folder as --manual_dir.
"""

  @classmethod
  def check_layout(cls, manual_dir):
    if not storage.isdir(manual_dir):
      return [f"{manual_dir} does not exist"]
    if not images.list_images(manual_dir):
      return [f"{manual_dir} holds no image files ({', '.join(images.IMAGE_EXTENSIONS)})"]
    return []

  @classmethod
  def split_items(cls, manual_dir):
    items = _flat_folder_items(manual_dir, "img")
    n_test = max(1, int(round(cls.TEST_FRACTION * len(items)))) if len(items) > 1 else 0
    return {"train": items[:len(items) - n_test], "test": items[len(items) - n_test:]}


class Imagenet256(ManualImageBuilder, skip_registration=True):
  """ImageNet-2012 (ILSVRC2012) at 256×256: centre crop, antialiased bicubic resize, 1000 classes.

  Labels: the index of the class folder (WordNet id, e.g. n01440764) in the sorted list of the
  1000 training folders — the order of torchvision's ImageFolder and of TFDS `imagenet2012`.
  Splits: 'train' = the 1,281,167 training images; 'test' = the 50,000 validation images (the
  ILSVRC test labels are not public). Random horizontal flips are applied by the input
  pipeline at training time, not stored.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Centre crop, antialiased bicubic resize to 256, JPEG."}
  NUM_CLASSES = 1000
  ENCODING = "jpeg"
  DESCRIPTION = "ImageNet-2012 centre-cropped and resized to 256x256."
  HOMEPAGE = "https://image-net.org/challenges/LSVRC/2012/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org
(account required) and extract them into the usual class-folder layout:
  <manual_dir>/train/n01440764/*.JPEG ... (1000 folders; untar each per-class tar)
  <manual_dir>/val/n01440764/*.JPEG ...   (1000 folders; sort the flat val images into class
                                           folders, e.g. with the widely used valprep.sh)
"""

  @classmethod
  def _classes(cls, folder):
    return sorted(e for e in storage.listdir(folder) if storage.isdir(storage.join(folder, e)))

  @classmethod
  def check_layout(cls, manual_dir):
    problems = []
    for sub in ("train", "val"):
      path = storage.join(manual_dir, sub)
      if not storage.isdir(path):
        problems.append(f"{path} does not exist")
        continue
      classes = cls._classes(path)
      if len(classes) != cls.NUM_CLASSES:
        problems.append(f"{path} has {len(classes)} class folders, expected {cls.NUM_CLASSES}")
    if not problems:
      train, val = (cls._classes(storage.join(manual_dir, s)) for s in ("train", "val"))
      if train != val:
        problems.append("train/ and val/ have different class folders")
    return problems

  @classmethod
  def split_items(cls, manual_dir):
    classes = cls._classes(storage.join(manual_dir, "train"))
    out = {}
    for split, sub in (("train", "train"), ("test", "val")):
      items = []
      for label, wnid in enumerate(classes):
        folder = storage.join(manual_dir, sub, wnid)
        items.extend(_flat_folder_items(folder, f"{sub}/{wnid}", label))
      out[split] = items
    return out


class LsunChurch(ManualImageBuilder, skip_registration=True):
  """LSUN church outdoor at 256×256 (126,227 train, 300 val images), unconditional.

  'test' is LSUN's validation set.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Centre crop, antialiased bicubic resize to 256, JPEG."}
  NUM_CLASSES = 1
  ENCODING = "jpeg"
  DESCRIPTION = "LSUN church_outdoor at 256x256 (unconditional)."
  HOMEPAGE = "https://www.yf.io/p/lsun"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download church_outdoor_train_lmdb.zip and church_outdoor_val_lmdb.zip with the LSUN tools
(github.com/fyu/lsun: `python download.py -c church_outdoor`), unzip them and export the
images to files (`python data.py export church_outdoor_train_lmdb --out_dir <manual_dir>/train
--flat`, the same for val into <manual_dir>/val), giving:
  <manual_dir>/train/*.webp
  <manual_dir>/val/*.webp
"""

  @classmethod
  def check_layout(cls, manual_dir):
    problems = []
    for sub in ("train", "val"):
      path = storage.join(manual_dir, sub)
      if not storage.isdir(path):
        problems.append(f"{path} does not exist")
      elif not images.list_images(path):
        problems.append(f"{path} holds no image files")
    return problems

  @classmethod
  def split_items(cls, manual_dir):
    return {"train": _flat_folder_items(storage.join(manual_dir, "train"), "train"),
            "test": _flat_folder_items(storage.join(manual_dir, "val"), "val")}


# Names used in `data.name` and on the prepare command line.
BUILDERS = {"celebahq256": Celebahq256, "imagenet256": Imagenet256, "lsun_church": LsunChurch}


def prepare(name: str, manual_dir: str, data_dir=None):
  """Checks `manual_dir` and builds dataset `name` into `data_dir` (no-op when already built).

  Args:
    name: a key of `BUILDERS`.
    manual_dir: folder with the downloaded files, in the layout of the builder's instructions
      (local or remote).
    data_dir: TFDS data directory (None: the TFDS default, `~/tensorflow_datasets`); a remote
      one is built locally and uploaded.

  Returns:
    The prepared builder.

  Raises:
    DataNotPreparedError: the layout of `manual_dir` is wrong; the message lists what is missing.
  """
  cls = BUILDERS[name]
  builder = base.make_builder(cls, data_dir)
  if builder.is_prepared():
    base.publish(builder, data_dir)
    return builder
  manual_dir = storage.absolute(os.path.expanduser(manual_dir))
  problems = cls.check_layout(manual_dir)
  if problems:
    raise errors.DataNotPreparedError(
        layout_message(name, manual_dir, problems, cls.MANUAL_DOWNLOAD_INSTRUCTIONS))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  base.publish(builder, data_dir)
  return builder
