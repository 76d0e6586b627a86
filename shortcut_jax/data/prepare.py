"""Command line: build a dataset into a TFDS data_dir once, before training.

    python -m shortcut_jax.data.prepare --dataset celebahq256 --manual_dir /data/celebahq \
        --data_dir ~/tensorflow_datasets
    python -m shortcut_jax.data.prepare --dataset imagenet256 --manual_dir /data/imagenet
    python -m shortcut_jax.data.prepare --dataset lsun_church --manual_dir /data/lsun_church
    python -m shortcut_jax.data.prepare --dataset digits            # Offline, seconds.
    python -m shortcut_jax.data.prepare --dataset image_folder --folder /data/pets --image_size 64
    python -m shortcut_jax.data.prepare --dataset photos_large      # apt-get installs the photos.
    python -m shortcut_jax.data.prepare --dataset div2k [--manual_dir /data/div2k_unzipped]
    python -m shortcut_jax.data.prepare --dataset photos_large --photos_dir ~/my_photos

`--manual_dir` is the folder holding the downloaded files in the layout the dataset's builder
describes (`shortcut_jax/data/builders/manual.py`; a wrong layout is reported with the
expected one). Preparing an already prepared dataset does nothing.

Any of the folders may be remote (`--data_dir gs://bucket/tfds`, `--manual_dir gs://...`,
`--folder gs://...`): the images are read through `shortcut_jax.storage`, and a remote data_dir
gets a dataset built in a local cache folder and then uploaded (`builders/base.py`).
"""

import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from shortcut_jax import console
from shortcut_jax.data import catalog
from shortcut_jax.data import errors
from shortcut_jax.data.builders import div2k
from shortcut_jax.data.builders import manual
from shortcut_jax.data.builders import photos_large

_DATASET = flags.DEFINE_enum("dataset", None, sorted(catalog.SPECS), "Dataset to prepare.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the downloaded files "
                                  "(celebahq256, imagenet256, lsun_church; div2k offline).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets).")
_FOLDER = flags.DEFINE_string("folder", None, "Image folder (image_folder only).")
_PHOTOS_DIR = flags.DEFINE_string(
    "photos_dir", None, "photos_large only: build it from this folder of photographs instead of "
    "the Debian wallpaper packages (train with --config.data.folder=DIR).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Image size (image_folder only).")


def prepare(dataset: str, *, manual_dir: Optional[str] = None, data_dir: Optional[str] = None,
            folder: Optional[str] = None, image_size: Optional[int] = None,
            photos_dir: Optional[str] = None):
  """Builds `dataset` into `data_dir` (no-op when already built).

  Args:
    dataset: a `data.name` value.
    manual_dir: downloaded files (datasets with manual data only).
    data_dir: TFDS data directory (None: TFDS default).
    folder: image folder (image_folder only).
    image_size: stored image size (image_folder only).
    photos_dir: photos_large only: the user's photographs instead of the packaged ones (which
      are installed with apt-get when missing).

  Returns:
    The prepared TFDS builder.

  Raises:
    ValueError: a needed argument is missing.
    DataNotPreparedError: the manual folder's layout is wrong.
  """
  spec = catalog.SPECS[dataset]
  if spec.manual:
    if not manual_dir:
      raise ValueError(f"--manual_dir is required for {dataset}:\n"
                       f"{manual.BUILDERS[dataset].MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return manual.prepare(dataset, manual_dir, data_dir)
  if dataset == "div2k":  # TFDS's builder: downloads, or reads the unzipped archives.
    return div2k.prepare(data_dir, manual_dir)
  if dataset == "photos_large":
    if not photos_dir and photos_large.missing_packaged():
      photos_large.install_packages()
    folder = photos_dir
  elif photos_dir:
    raise ValueError("--photos_dir is for --dataset photos_large only")
  if dataset == "image_folder" and not (folder and image_size):
    raise ValueError("--folder and --image_size are required for image_folder")
  data_config = ml_collections.ConfigDict(dict(
      name=dataset, image_size=image_size or spec.native_size, data_dir=data_dir, folder=folder,
      num_classes=spec.num_classes or 1))
  return catalog.get_builder(data_config)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    builder = prepare(_DATASET.value, manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value,
                      folder=_FOLDER.value, image_size=_IMAGE_SIZE.value,
                      photos_dir=_PHOTOS_DIR.value)
  except (errors.DataNotPreparedError, ValueError, FileNotFoundError) as e:
    # The message says what to fix; a traceback would only bury it.
    sys.exit(f"error: {e}")
  logging.info("prepared %s in %s: %s", _DATASET.value, _DATA_DIR.value or builder.data_dir,
               {k: v.num_examples for k, v in builder.info.splits.items()})


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset")
  console.run(main)
