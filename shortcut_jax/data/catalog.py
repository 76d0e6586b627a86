"""The datasets `data.name` can select: their fixed properties, config checks, and builders.

One table (`SPECS`) says what each dataset is (native image size, channels, classes, whether
training flips images, whether its files must be downloaded by hand); `validate_data_config`
checks a `config.data` section against it with errors that name the field, and `get_builder`
returns a prepared TFDS builder: the embedded `digits` and `photos` and `image_folder` are
built on first use (seconds for the embedded ones), the others raise `DataNotPreparedError`
with the command that prepares them.

A remote `data.data_dir` (gs://...) is served from a local cache folder: the dataset's folder
is downloaded when the bucket holds it, and a dataset built here is uploaded
(`builders.base.make_builder` / `publish`).
"""

import dataclasses
import os
from typing import Optional

from absl import logging

from shortcut_jax.data import errors
from shortcut_jax.data import image_folder
from shortcut_jax.data.builders import base
from shortcut_jax.data.builders import div2k
from shortcut_jax.data.builders import digits
from shortcut_jax.data.builders import manual
from shortcut_jax.data.builders import photos
from shortcut_jax.data.builders import photos_large


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What is fixed about a dataset, before any of its data is read.

  Attributes:
    name: the `data.name` value.
    native_size: side of the stored images (None: set by `data.image_size` at build time).
    channels: channels of the images the pipeline yields.
    num_classes: label classes (None: read from the folder for `image_folder`).
    random_flip: whether training batches get random horizontal flips.
    manual: whether the user must download the files and run the prepare command first.
    image_key: the feature holding the (HR) image.
    held_out_split: the stored split the library calls 'test'.
    variable_size: images of any size (super-resolution only: HR crops are cut from them).
  """
  name: str
  native_size: Optional[int]
  channels: int
  num_classes: Optional[int]
  random_flip: bool
  manual: bool
  image_key: str = "image"
  held_out_split: str = "test"
  variable_size: bool = False


SPECS = {
    "digits": DatasetSpec("digits", digits.IMAGE_SIZE, 1, digits.NUM_CLASSES, False, False),
    # Crops of real photographs, for super-resolution (`data.low_res_factor`) without downloads.
    "photos": DatasetSpec("photos", photos.CROP_SIZE, 3, 1, True, False),
    # Crops of 37 photographs from Debian wallpaper packages (or of `data.folder`): built on
    # first use once the packages are installed (`prepare --dataset photos_large` installs them).
    "photos_large": DatasetSpec("photos_large", photos_large.CROP_SIZE, 3, 1, True, False),
    # The original trains CelebA-HQ and LSUN unconditionally and without flips; ImageNet with
    # flips, as ADM/DiT do.
    "celebahq256": DatasetSpec("celebahq256", manual.IMAGE_SIZE, 3, 1, False, True),
    "imagenet256": DatasetSpec("imagenet256", manual.IMAGE_SIZE, 3, 1000, True, True),
    "lsun_church": DatasetSpec("lsun_church", manual.IMAGE_SIZE, 3, 1, False, True),
    "image_folder": DatasetSpec("image_folder", None, 3, None, False, False),
    # TFDS's DIV2K: 2K photographs of any size, for super-resolution; its 'lr' is not used.
    "div2k": DatasetSpec("div2k", None, 3, 1, True, False, image_key="hr",
                         held_out_split="validation", variable_size=True),
}

VARIABLE_SIZE_NEEDS_FACTOR = ("data.name={name!r} holds images of any size: it is for "
                              "super-resolution (data.low_res_factor > 0), whose HR crops are "
                              "cut from them")

# `data.latents`: pixels, VAE-encoded inside the train step, or read from an encoded dataset.
LATENTS = ("none", "online", "precomputed")

# Datasets built from files that ship with the installed packages: built on first use.
_EMBEDDED_BUILDERS = {"digits": digits.Digits, "photos": photos.Photos}


def data_dir_of(data_config) -> Optional[str]:
  """`data.data_dir` with '~' expanded (None: TFDS's default, `$TFDS_DATA_DIR` or ~/tensorflow_datasets)."""
  d = data_config.get("data_dir", None)
  return os.path.expanduser(d) if d else None


def validate_data_config(data_config) -> DatasetSpec:
  """Checks `config.data` against the dataset's fixed properties.

  Rules: `data.name` is one of `SPECS`; `data.image_size` is a positive int and, for a dataset
  stored at a native size, not larger than it (smaller sizes are produced by an antialiased
  downsampling in the pipeline); `data.num_classes` is the dataset's class count, or 1 for
  unconditional training (every label then becomes 0); `data.folder` is set for
  'image_folder'; `data.low_res_factor` (absent: 0) is 0 (no super-resolution) or a positive
  integer dividing `data.image_size`; `data.latents` (absent: 'none') is one of `LATENTS`, and
  'precomputed' needs `data.latents_dir` and no super-resolution.

  Args:
    data_config: the `config.data` section (ConfigDict or anything with `.get`/attributes).

  Returns:
    The dataset's `DatasetSpec`.

  Raises:
    ValueError: naming the offending field(s).
  """
  name = data_config.get("name", None)
  if name not in SPECS:
    raise ValueError(f"data.name must be one of {sorted(SPECS)}, got {name!r}")
  spec = SPECS[name]
  problems = []
  size = data_config.get("image_size", None)
  if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
    problems.append(f"data.image_size must be a positive integer, got {size!r}")
  elif spec.native_size is not None and size > spec.native_size:
    problems.append(f"data.image_size={size} is larger than the {spec.native_size}x"
                    f"{spec.native_size} images {name!r} stores; use {spec.native_size} or less")
  num_classes = data_config.get("num_classes", None)
  if spec.num_classes is not None and num_classes not in (1, spec.num_classes):
    problems.append(f"data.num_classes must be {spec.num_classes} for {name!r} (or 1 for an "
                    f"unconditional model), got {num_classes!r}")
  factor = data_config.get("low_res_factor", 0)
  if not isinstance(factor, int) or isinstance(factor, bool) or factor < 0:
    problems.append(f"data.low_res_factor must be 0 or a positive integer, got {factor!r}")
  elif factor and isinstance(size, int) and size % factor:
    problems.append(f"data.image_size ({size}) must be divisible by data.low_res_factor "
                    f"({factor})")
  if spec.variable_size and not factor:
    problems.append(VARIABLE_SIZE_NEEDS_FACTOR.format(name=name))
  if name == "image_folder" and not data_config.get("folder", None):
    problems.append("data.folder must be set when data.name='image_folder'")
  latents = data_config.get("latents", "none")
  if latents not in LATENTS:
    problems.append(f"data.latents must be one of {LATENTS}, got {latents!r}")
  elif latents == "precomputed":
    if not data_config.get("latents_dir", None):
      problems.append("data.latents_dir must be set when data.latents='precomputed' (write it "
                      "with `python -m shortcut_jax.tools.encode_dataset --config=... --out=DIR`)")
  if problems:
    raise ValueError("invalid data config:\n  " + "\n  ".join(problems))
  return spec


def _not_prepared_message(name: str, data_dir: Optional[str]) -> str:
  cls = manual.BUILDERS[name]
  where = data_dir or "the TFDS default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  return (f"dataset {name!r} (data.name) is not prepared in {where}. It needs files you "
          f"download yourself:\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}Then prepare it once with:\n"
          f"  {errors.prepare_command(name, data_dir)}")


def get_builder(data_config, *, prepare: bool = True):
  """The TFDS builder of `config.data`, prepared.

  Args:
    data_config: the `config.data` section.
    prepare: build `digits` / `photos` / `photos_large` / `image_folder` when missing (False:
      return it unprepared). `photos_large` is built from the installed wallpaper packages or
      from `data.folder`.

  Returns:
    A `tfds.core.DatasetBuilder`.

  Raises:
    ValueError: invalid config values.
    DataNotPreparedError: a manual-download dataset has not been prepared, or the photographs
      of `photos_large` are not installed.
  """
  spec = validate_data_config(data_config)
  data_dir = data_dir_of(data_config)
  if spec.name in _EMBEDDED_BUILDERS:
    builder = base.make_builder(_EMBEDDED_BUILDERS[spec.name], data_dir)
  elif spec.name == "photos_large":
    folder = data_config.get("folder", None)
    builder = photos_large.make_builder(folder, data_dir)
    if prepare and not builder.is_prepared():
      photos_large.require_photos(folder)
  elif spec.name == "div2k":
    builder = div2k.builder(data_dir)
    if not builder.is_prepared():
      raise errors.DataNotPreparedError(div2k.not_prepared_message(data_dir))
    return builder
  elif spec.name == "image_folder":
    builder = image_folder.make_builder(data_config.folder, data_config.image_size, data_dir,
                                        embeddings=data_config.get("embeddings", None))
  else:
    builder = base.make_builder(manual.BUILDERS[spec.name], data_dir)
    if not builder.is_prepared():
      raise errors.DataNotPreparedError(_not_prepared_message(spec.name, data_dir))
    return builder
  if spec.name == "image_folder":
    found = max(1, len(builder.builder_config.class_names))
    if data_config.num_classes not in (1, found):
      raise ValueError(f"data.num_classes must be {found} (the class sub-folders of "
                       f"{builder.builder_config.folder}) or 1, got {data_config.num_classes!r}")
  if prepare and not builder.is_prepared():
    logging.info("building dataset %s into %s", spec.name, builder.data_dir)
    builder.download_and_prepare()
  base.publish(builder, data_dir)
  return builder
