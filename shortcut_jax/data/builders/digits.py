"""`digits`: the embedded default dataset, built offline from scikit-learn's 8×8 digits.

scikit-learn ships the UCI optical-recognition digits (`sklearn.datasets.load_digits`): 1,797
grey images of 8×8 pixels with values 0..16, labels 0..9. This builder turns them into a TFDS
dataset of 16×16×1 uint8 images so that every part of the library (training, FID-style
evaluation, resumption, multi-process input) can be exercised on a laptop in seconds with no
download.
"""

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from shortcut_jax.data.builders import base

# 16×16: the smallest size a DiT with patch size 2 turns into a useful number of tokens (64).
IMAGE_SIZE = 16
NUM_CLASSES = 10
# Fraction of each class held out for the 'test' split.
TEST_FRACTION = 0.1
# Seed of the per-class shuffle that picks the held-out examples (fixed: the split is data).
SPLIT_SEED = 0


def upsample(image_8x8: np.ndarray) -> np.ndarray:
  """Maps one sklearn digit (8×8, values 0..16) to the stored 16×16 uint8 image.

  The values are scaled to 0..255 first (`v * 255 / 16`, rounded) and then resized with PIL's
  bilinear filter. Bilinear rather than nearest ×2: nearest would store blocky 2×2 pixels, and
  a generative model trained on them spends its capacity on the block edges. Bilinear rather
  than bicubic: bilinear never overshoots, so the result stays in 0..255 without clipping and
  its mean matches the original's; it is also simple to reproduce in numpy (half-pixel
  centres, edges clamped), which the tests do.

  Args:
    image_8x8: array [8, 8] with values in 0..16.

  Returns:
    uint8 array [16, 16, 1].
  """
  scaled = np.round(np.asarray(image_8x8, np.float64) * (255.0 / 16.0)).astype(np.uint8)
  img = Image.fromarray(scaled, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
  return np.asarray(img, np.uint8)[..., None]


def split_indices(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                  seed: int = SPLIT_SEED):
  """Deterministic stratified split: `round(test_fraction · n_c)` examples of each class to test.

  Args:
    labels: int array [n].
    test_fraction: share of each class held out.
    seed: seed of the per-class permutation.

  Returns:
    `(train_indices, test_indices)`, each sorted.
  """
  rng = np.random.RandomState(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    perm = rng.permutation(idx)
    n_test = int(round(test_fraction * len(idx)))
    test.append(perm[:n_test])
    train.append(perm[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class Digits(base.OfflineBuilder, skip_registration=True):
  """scikit-learn's digits as 16×16×1 uint8 images with labels 0..9.

  Splits: 'train' (1,618) and 'test' (179): 10% of each class (rounded), chosen by a fixed-seed
  permutation (`split_indices`), so the split never changes between builds.

  Resizing: see `upsample` — the 0..16 values are rescaled to 0..255 and upsampled ×2 with
  PIL's bilinear filter (smooth, no overshoot, reproducible in numpy).

  Build it with `Digits(data_dir=...).download_and_prepare()` (a no-op when already built) or
  through `shortcut_jax.data.catalog.get_builder`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "16x16 bilinear upsampling, stratified 10% test split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="scikit-learn digits (UCI ML optical recognition), upsampled to 16x16.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is in the scikit-learn wheel.
    from sklearn import datasets as sk_datasets  # Imported here: only preparation needs it.
    digits = sk_datasets.load_digits()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = split_indices(labels)
    return {
        "train": self._generate_examples(digits.images, labels, train_idx),
        "test": self._generate_examples(digits.images, labels, test_idx),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      # The key is the index in load_digits(): a test can find the original image again.
      yield int(i), {"image": upsample(images[i]), "label": int(labels[i])}
