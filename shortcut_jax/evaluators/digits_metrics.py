"""Quality metrics for the embedded digits dataset: FD-digits and class accuracy.

A small classifier (scikit-learn MLP, 256-128 hidden units, fixed seed) is trained on the digits
training split the first time it is needed and cached as plain arrays (no pickle). Its last
hidden layer (128-d) is the feature space of the Fréchet distance "FD-digits", computed against
the training split's statistics exactly like FID; its predictions give the class accuracy of
conditional samples (the fraction classified as the label they were generated for).
"""

import hashlib
import os
from typing import Dict, Optional

import numpy as np
from absl import logging

from shortcut_jax import storage
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators import fid

_VERSION = "v1"
_HIDDEN = (256, 128)


def _default_cache_dir() -> str:
  return os.environ.get("SHORTCUT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "shortcut_jax"))


def load_split(data_config, split: str):
  """All images (float32 [-1, 1]) and labels of a digits split (the whole split on every
  process: the reference and the classifier must be the same everywhere)."""
  images, labels = [], []
  for batch in pipeline.make_dataset(data_config, split=split, global_batch_size=256, seed=0,
                                     train=False, process_index=0, process_count=1):
    images.append(batch["image"])
    labels.append(batch["label"])
  return np.concatenate(images), np.concatenate(labels)


class DigitsClassifier:
  """MLP on flattened 16x16 images in [-1, 1]; `features` = last hidden layer (ReLU)."""

  def __init__(self, weights, biases):
    self.weights, self.biases = weights, biases

  def features(self, images) -> np.ndarray:
    h = np.asarray(images, np.float64).reshape(len(images), -1)
    for w, b in zip(self.weights[:-1], self.biases[:-1]):
      h = np.maximum(h @ w + b, 0.0)
    return h

  def predict(self, images) -> np.ndarray:
    logits = self.features(images) @ self.weights[-1] + self.biases[-1]
    return np.argmax(logits, axis=-1)

  @classmethod
  def train(cls, images, labels, seed: int = 0) -> "DigitsClassifier":
    from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=_HIDDEN, alpha=1e-3, max_iter=300, random_state=seed)
    clf.fit(np.asarray(images, np.float64).reshape(len(images), -1), labels)
    return cls([np.asarray(w) for w in clf.coefs_], [np.asarray(b) for b in clf.intercepts_])

  def save(self, path):
    """Writes the arrays as an `.npz` at `path` (local or remote; whole, never half)."""
    arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
    arrays.update({f"b{i}": b for i, b in enumerate(self.biases)})
    storage.write_npz(path, **arrays)

  @classmethod
  def load(cls, path) -> "DigitsClassifier":
    with storage.open(path, "rb") as raw, np.load(raw, allow_pickle=False) as f:
      n = len([k for k in f.files if k.startswith("w")])
      return cls([f[f"w{i}"] for i in range(n)], [f[f"b{i}"] for i in range(n)])


def get_classifier(data_config, cache_dir: Optional[str] = None) -> DigitsClassifier:
  """The cached classifier for this data config, training it (a few seconds) if missing."""
  if data_config.name != "digits":
    raise ValueError(f"digits metrics need data.name='digits', got {data_config.name!r}")
  cache_dir = cache_dir or _default_cache_dir()
  storage.makedirs(cache_dir)
  key = hashlib.sha1(f"{_VERSION}-{data_config.image_size}-{_HIDDEN}".encode()).hexdigest()[:12]
  path = storage.join(cache_dir, f"digits_classifier_{key}.npz")
  if storage.exists(path):
    try:
      return DigitsClassifier.load(path)
    except (OSError, ValueError, KeyError) as e:
      logging.warning("cached digits classifier %s unreadable (%s): retraining", path, e)
  images, labels = load_split(data_config, "train")
  clf = DigitsClassifier.train(images, labels)
  clf.save(path)
  logging.info("trained digits classifier on %d images, cached at %s", len(images), path)
  return clf


def reference_stats(clf: DigitsClassifier, data_config):
  images, _ = load_split(data_config, "train")
  stats = fid.RunningStats()
  stats.update(clf.features(images))
  return stats.result()


def digits_metrics(clf, ref_stats, images, labels=None) -> Dict[str, float]:
  """FD-digits of `images` ([-1, 1] NHWC) against the reference, and class accuracy."""
  images = np.clip(np.asarray(images, np.float32), -1, 1)
  stats = fid.RunningStats()
  stats.update(clf.features(images))
  mu, sigma = stats.result()
  out = {"fd_digits": float(fid.fid_from_stats(mu, sigma, *ref_stats))}
  if labels is not None and np.all(np.asarray(labels) < 10):
    out["accuracy"] = float(np.mean(clf.predict(images) == np.asarray(labels)))
  return out
