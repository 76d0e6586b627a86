"""Reading image files for the dataset builders: decode, centre-crop, resize, skip bad files.

The builders with manual data (`builders/manual.py`) and the image-folder builder
(`image_folder.py`) all turn arbitrary image files into square uint8 arrays the same way, so
the preprocessing lives here once. Resizing happens once, when a dataset is prepared, with
PIL's antialiased filters; the input pipeline then only decodes the stored square images.

Folders and files are listed and read through `shortcut_jax.storage`, so they may be remote
(gs://...): a folder is one listing request, an image one download.
"""

from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image

from shortcut_jax import storage

# Suffixes PIL can read that image collections use in practice (LSUN exports .webp).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


# Sub-folders that hold a dataset's splits (`split_dirs`).
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val", "validation")}


def split_dirs(folder: str) -> Dict[str, str]:
  """`{'train': sub, 'test': sub}` when the folder has explicit split sub-folders, else {}."""
  found = {}
  for split, names in SPLIT_FOLDERS.items():
    for name in names:
      if storage.isdir(storage.join(folder, name)):
        found[split] = name
        break
  return found if "train" in found else {}


def list_images(folder: str, recursive: bool = True) -> List[str]:
  """Image files under `folder` as sorted paths relative to it (sorted: builds are reproducible).

  Args:
    folder: the directory to scan.
    recursive: also look into sub-directories.

  Returns:
    Relative paths with '/' separators, sorted.
  """
  if recursive:
    return [rel for rel in storage.walk_files(folder) if is_image_file(rel)]
  return sorted(f for f in storage.listdir(folder)
                if is_image_file(f) and storage.isfile(storage.join(folder, f)))


def center_crop_resize(image: Image.Image, size: int, resample=Image.BICUBIC) -> np.ndarray:
  """Crops the central square of the short side and resizes it to `size`×`size`.

  PIL's resize filters widen their support when shrinking, so downsampling is antialiased (the
  ADM / guided-diffusion preprocessing of ImageNet also crops the centre and resizes with an
  antialiased bicubic filter).

  Args:
    image: a PIL image in any mode.
    size: output side length.
    resample: PIL filter.

  Returns:
    uint8 array [size, size, channels] with the image's channels (RGB or L).
  """
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  image = image.crop((left, top, left + side, top + side))
  if side != size:
    image = image.resize((size, size), resample=resample)
  return np.asarray(image, dtype=np.uint8)


def read_image(path: str, size: int, mode: str = "RGB") -> np.ndarray:
  """Decodes `path`, converts it to `mode` and centre-crops/resizes it (raises on bad files).

  Args:
    path: image file.
    size: output side length.
    mode: PIL mode, 'RGB' (3 channels) or 'L' (1 channel).

  Returns:
    uint8 array [size, size, 3 or 1].
  """
  with storage.open(path, "rb") as f, Image.open(f) as img:
    img.load()  # Forces the full decode here, so a truncated file fails inside the caller's try.
    img = img.convert(mode)
  arr = center_crop_resize(img, size)
  return arr[..., None] if arr.ndim == 2 else arr


def read_images_skipping_bad(
    items: Iterable[Tuple[str, str, dict]], size: int, mode: str = "RGB",
    what: str = "images") -> Iterator[Tuple[str, dict]]:
  """Yields `(key, example)` for every readable file; unreadable ones are counted and skipped.

  Args:
    items: `(key, path, extra_features)` triples; the example is `extra_features` plus `image`.
    size: output side length.
    mode: PIL mode for the stored image.
    what: name of the collection for the warning.

  Yields:
    `(key, example dict)` as TFDS's `_generate_examples` expects.
  """
  skipped: List[str] = []
  total = 0
  for key, path, extra in items:
    total += 1
    try:
      image = read_image(path, size, mode)
    except Exception as e:  # pylint: disable=broad-except
      # A single corrupt file in a folder of millions must not stop a preparation that takes hours.
      skipped.append(path)
      logging.debug("skipping unreadable image %s: %s", path, e)
      continue
    yield key, dict(extra, image=image)
  if skipped:
    logging.warning("skipped %d unreadable of %d %s (first: %s)", len(skipped), total, what,
                    ", ".join(skipped[:5]))


def folder_class_names(folder: str) -> Optional[Sequence[str]]:
  """Sorted names of the sub-folders of `folder` that contain images; None when there are none."""
  names = sorted({rel.split("/", 1)[0] for rel in list_images(folder) if "/" in rel})
  return names or None
