"""`photos`: an embedded dataset of real photographs, for super-resolution on a laptop.

scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`) ship a handful of real
photographs in their wheels. This builder cuts them into fixed `CROP_SIZE`×`CROP_SIZE` RGB
crops, so that image-conditioned models (`data.low_res_factor` > 0) can be trained and
evaluated on natural images with no download. The pipeline then takes `data.image_size`
sub-crops of these crops (random in training, central in evaluation).

Construction (deterministic; nothing random):
  * each photograph is loaded as uint8 RGB (`camera`, grey, is repeated to three channels);
    one whose short side is longer than `MAX_SHORT_SIDE` is first shrunk to that short side
    with PIL's antialiased bicubic filter, so the two very large pictures (retina 1411²,
    hubble 872×1000) do not dominate the dataset;
  * crops are laid out on a grid with the positions of `shortcut_jax.tiling.tile_positions`
    (at least `CROP_SIZE - STRIDE` pixels of overlap, last crop flush with the border);
  * crops that are almost flat (grey-level std below `MIN_CROP_STD`, e.g. the black
    background of retina and hubble) are dropped: there is nothing to super-resolve.
Split by photograph: the crops of `TEST_PHOTOS` form 'test', all the others 'train', so no
test crop overlaps a training crop.

Photographs left out: `skimage.data.cat` is the same picture as `chelsea`; the stereo pair
`motorcycle_left`/`motorcycle_right` and the other larger `skimage.data` images are fetched
from the internet on first use (or absent, as in scikit-image 0.26) and cannot be part of an
offline dataset.
"""

from typing import Dict, Iterator, List, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from shortcut_jax import tiling
from shortcut_jax.data.builders import base

CROP_SIZE = 128
STRIDE = 96
MAX_SHORT_SIDE = 512
# Grey-level (0..255) standard deviation under which a crop counts as flat and is dropped.
MIN_CROP_STD = 8.0
# (name, library) of every photograph, in the order the crops are stored.
PHOTOS = (
    ("astronaut", "skimage"),
    ("camera", "skimage"),
    ("chelsea", "skimage"),
    ("coffee", "skimage"),
    ("hubble_deep_field", "skimage"),
    ("immunohistochemistry", "skimage"),
    ("retina", "skimage"),
    ("rocket", "skimage"),
    ("china", "sklearn"),
    ("flower", "sklearn"),
)
# Held out entirely for 'test': an animal close-up (fur, fine texture) and an outdoor scene
# (architecture, foliage, sky) — unlike each other and unlike most training photographs.
TEST_PHOTOS = ("chelsea", "china")


def load_photo(name: str, library: str) -> np.ndarray:
  """One shipped photograph as uint8 RGB [H, W, 3], before any resize.

  Args:
    name: a `skimage.data` function name, or 'china' / 'flower' from scikit-learn.
    library: 'skimage' or 'sklearn'.

  Returns:
    uint8 array [H, W, 3].
  """
  # Imported here: only building the dataset needs these packages.
  if library == "skimage":
    from skimage import data as sk_data  # pylint: disable=g-import-not-at-top
    image = getattr(sk_data, name)()
  elif library == "sklearn":
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
    sample = sk_datasets.load_sample_images()
    names = [path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
             for path in sample.filenames]
    image = sample.images[names.index(name)]
  else:
    raise ValueError(f"unknown library {library!r}")
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"photo {name!r} is {image.dtype}, expected uint8")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return image[..., :3]


def shrink(image: np.ndarray, max_short_side: int = MAX_SHORT_SIDE) -> np.ndarray:
  """Shrinks `image` (antialiased PIL bicubic) so that its short side is at most `max_short_side`."""
  height, width = image.shape[:2]
  short = min(height, width)
  if short <= max_short_side:
    return image
  size = (int(round(width * max_short_side / short)), int(round(height * max_short_side / short)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), np.uint8)


def crops(image: np.ndarray, crop_size: int = CROP_SIZE, stride: int = STRIDE,
          min_std: float = MIN_CROP_STD) -> Iterator[Tuple[Tuple[int, int], np.ndarray]]:
  """The grid crops of one photograph that are not flat.

  Args:
    image: uint8 [H, W, 3] with both sides >= `crop_size`.
    crop_size: side of the crops.
    stride: largest step between neighbouring crops.
    min_std: crops whose grey-level std is below this are skipped.

  Yields:
    `((y, x), crop)` with the crop's top-left corner.
  """
  height, width = image.shape[:2]
  if min(height, width) < crop_size:
    raise ValueError(f"photo of size {height}x{width} is smaller than the crop size {crop_size}")
  overlap = crop_size - stride
  for y in tiling.tile_positions(height, crop_size, overlap):
    for x in tiling.tile_positions(width, crop_size, overlap):
      crop = image[y:y + crop_size, x:x + crop_size]
      if crop.astype(np.float64).mean(-1).std() >= min_std:
        yield (y, x), crop


class Photos(base.OfflineBuilder, skip_registration=True):
  """Crops of the photographs shipped by scikit-image and scikit-learn, 128×128×3 uint8.

  Features: 'image' (PNG), 'label' (always 0: unconditional), 'photo' (the photograph's
  name). Keys are '<photo>/<y>_<x>' (the crop's corner in the shrunk photograph).
  Splits: 'train' (every photograph but `TEST_PHOTOS`) and 'test' (`TEST_PHOTOS`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "128x128 crops at stride <= 96, short side <= 512, split by photo."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=("Crops of the photographs shipped with scikit-image and scikit-learn, "
                     f"{CROP_SIZE}x{CROP_SIZE} RGB, split by photograph."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(CROP_SIZE, CROP_SIZE, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=1),
            "photo": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is in the scikit-image and scikit-learn wheels.
    names = [name for name, _ in PHOTOS]
    missing = [name for name in TEST_PHOTOS if name not in names]
    if missing:
      raise ValueError(f"TEST_PHOTOS {missing} are not in PHOTOS")
    split_photos: Dict[str, List[Tuple[str, str]]] = {"train": [], "test": []}
    for name, library in PHOTOS:
      split_photos["test" if name in TEST_PHOTOS else "train"].append((name, library))
    return {split: self._generate_examples(items) for split, items in split_photos.items()}

  def _generate_examples(self, items):
    for name, library in items:
      image = shrink(load_photo(name, library))
      count = 0
      for (y, x), crop in crops(image):
        count += 1
        yield f"{name}/{y}_{x}", {"image": crop, "label": 0, "photo": name}
      logging.info("photos: %d crops of %s (%dx%d)", count, name, *image.shape[:2])
