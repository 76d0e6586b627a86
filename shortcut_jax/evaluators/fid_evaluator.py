"""FID of a model or a dataset: the protocol of SPEC §5, run sharded over all local devices.

`fid.py` holds the statistics and the distance; this module feeds them:

  * `InceptionFeatures`: the FID InceptionV3 jitted with explicit shardings. Every batch is
    split along its first axis over a 1-D mesh of all local devices (`generate.data_mesh`); the weights
    are replicated. Grey images (digits) are repeated to 3 channels first.
  * Generation is `generate.generate_batches` on the same mesh as Inception: streamed, with
    fixed per-image seeds, data parallel.
  * `decode`: the hook that turns a model's output into pixels. Every model in this library
    generates pixels, so it is the identity; a latent model (SPEC §5: decode latents with the
    VAE) plugs its decoder in there and nothing else changes.
  * `model_stats` / `dataset_stats`: (mu, sigma) of generated images or of a dataset split.
  * `FIDEvaluator`: the in-training evaluator (`config.evals.fid`), logging `fid/steps_<N>`.
    Reference statistics and Inception weights are read when it is constructed, so a missing
    file stops the run before its first training step.

Scope of the sharding: every device of every process. The mesh (`gen.data_mesh()`) spans all
processes; each process generates its rows of every batch (its share of the fixed per-image
seeds: image i always starts from `fold_in(PRNGKey(seed), i)` with conditions `cond[k][i]`),
runs Inception on them, and accumulates the features of its rows only; the float64 statistics
are then merged across processes (`fid.RunningStats.combine_processes`), so the FID equals the
one-process value on the same seeds (tests/test_sharded_eval.py). Every process must take part
(the in-training evaluator runs on all of them; params are host copies,
`trainer.evaluator_state`).
"""

import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax import sharding
from shortcut_jax.data import catalog
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators import fid
from shortcut_jax import latents as latents_lib
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators.base import Evaluator
from shortcut_jax.models import inception

_STATS_HELP = ("compute reference statistics with `python eval.py --mode=fid_stats "
               "--config=<the training config> --out=<stats.npz>`, or use the original's / "
               "pytorch-fid's / ADM's reference .npz (docs/evaluation.md, FID)")


class InceptionFeatures:
  """FID Inception features with every batch sharded over a 1-D device mesh.

  Call it on any number of images (NHWC, [-1, 1], 1 or 3 channels; numpy or jax): they are cut
  into batches of `batch_size`, the last one padded so the network compiles once.
  """

  def __init__(self, variables, *, batch_size: int, mesh: Optional[Mesh] = None,
               image_size: Optional[int] = inception.IMAGE_SIZE):
    """Places the weights and jits the network.

    Args:
      variables: FID Inception variables (`inception.load_inception_variables`).
      batch_size: images per call; rounded up to a multiple of the device count.
      mesh: the device mesh (default `gen.data_mesh()`: every device of every process, so
        every process must make the same calls).
      image_size: Inception input side; 299 for FID (smaller only in tests).
    """
    self.mesh = mesh if mesh is not None else gen.data_mesh()
    self.batch_size = gen.round_up_batch(batch_size, self.mesh)
    self.data_sharding = NamedSharding(self.mesh, PartitionSpec(sharding.DATA_AXIS))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self._variables = jax.device_put(variables, replicated)
    model = inception.InceptionV3(image_size=image_size, antialias=False, clip=True)

    def apply(variables, images):
      if images.shape[-1] == 1:  # Grey images: the same value in R, G and B.
        images = jnp.repeat(images, 3, axis=-1)
      return model.apply(variables, images)

    self._apply = jax.jit(apply, in_shardings=(replicated, self.data_sharding),
                          out_shardings=self.data_sharding)
    # The rows of every batch this process feeds and keeps ([0, batch_size) with one process).
    self.local_rows = gen.local_rows(self.mesh, self.batch_size)

  def _features(self, images) -> jax.Array:
    if images.shape[0] != self.batch_size:
      raise ValueError(f"expected a batch of {self.batch_size} images, got {images.shape[0]}")
    if images.shape[-1] not in (1, 3):
      raise ValueError(f"FID needs 1- or 3-channel images, got shape {images.shape}")
    return self._apply(self._variables, gen.put_batch(images, self.mesh))

  def batch_features(self, images, count: Optional[int] = None) -> np.ndarray:
    """Features of one batch of exactly `batch_size` images; returns the first `count` rows
    (all rows on every process; a collective with several processes)."""
    return gen.to_host(self._features(images))[:count]

  def local_features(self, images, count: Optional[int] = None) -> np.ndarray:
    """This process's valid rows of one batch's features: rows [lo, min(hi, count)) of the
    batch, where [lo, hi) = `local_rows` (all `count` rows with one process). What
    `RunningStats` accumulates before `combine_processes`."""
    local, lo = gen.local_part(self._features(images))
    count = self.batch_size if count is None else count
    return local[:max(0, min(lo + len(local), count) - lo)]

  def __call__(self, images) -> np.ndarray:
    """Features [n, 2048] of n images (any n)."""
    out = []
    for start in range(0, images.shape[0], self.batch_size):
      chunk = np.asarray(images[start:start + self.batch_size], np.float32)
      n = chunk.shape[0]
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *chunk.shape[1:]),
                                                 np.float32)])
      out.append(self.batch_features(chunk, n))
    if not out:
      return np.zeros((0, inception.FEATURE_DIM), np.float32)
    return np.concatenate(out)


def load_features(inception_path: Optional[str], *, batch_size: int,
                  mesh: Optional[Mesh] = None,
                  image_size: Optional[int] = inception.IMAGE_SIZE
                  ) -> Tuple[InceptionFeatures, str]:
  """Reads the Inception weights (path, else `$SHORTCUT_JAX_INCEPTION`); returns (features, path).

  Raises:
    FileNotFoundError: no path given or the file is missing (the message says where to get it).
  """
  path = inception.resolve_weights_path(inception_path)
  variables = inception.load_inception_variables(path)
  return InceptionFeatures(variables, batch_size=batch_size, mesh=mesh,
                           image_size=image_size), path


def decode(exp, samples: jax.Array, mesh: Optional[Mesh] = None) -> jax.Array:
  """Model output -> images in [-1, 1] for Inception.

  The identity for pixel models; a latent model decodes its latents with the VAE here
  (SPEC §5), inside the same sharded loop (with several processes: each its own rows).
  """
  return gen.decode(exp, samples, mesh)


def model_stats(exp, params, features: InceptionFeatures, *, num_images: int, num_steps: int,
                cfg_scale: Optional[float], seed: int = 0, progress: bool = True
                ) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of the Inception features of `num_images` generated images."""
  stats = fid.RunningStats()
  with gen.progress_bar(num_images, f"FID {num_steps} steps", progress) as bar:
    for samples, n in gen.generate_batches(exp, params, num_images=num_images, num_steps=num_steps,
                                           cfg_scale=cfg_scale, seed=seed,
                                           batch_size=features.batch_size, mesh=features.mesh):
      # Each process keeps the features of its own rows; merged across processes below.
      stats.update(features.local_features(decode(exp, samples, features.mesh), n))
      bar.update(n)
  return stats.combine_processes().result()


def model_fid(exp, params, features: InceptionFeatures, reference: Tuple[np.ndarray, np.ndarray],
              *, steps: Sequence[int], num_images: int, cfg_scale: Optional[float],
              seed: int = 0, progress: bool = True) -> Dict[int, float]:
  """FID against `reference` (mu, sigma) for each step budget; {num_steps: fid}."""
  out = {}
  for n in steps:
    t0 = time.time()
    mu, sigma = model_stats(exp, params, features, num_images=num_images, num_steps=n,
                            cfg_scale=cfg_scale, seed=seed, progress=progress)
    out[n] = fid.fid_from_stats(mu, sigma, *reference)
    logging.info("FID %d steps, %d images: %.4f (%.1f s)", n, num_images, out[n],
                 time.time() - t0)
  return out


def split_size(data_config, split: str) -> Optional[int]:
  """Examples in `split` (TFDS split expressions allowed), or None when unknown."""
  try:
    return int(catalog.get_builder(data_config).info.splits[split].num_examples)
  except Exception:  # An expression TFDS cannot size: stream without a total.
    return None


def dataset_stats(data_config, features: Callable[[Any], np.ndarray], *, split: str = "train",
                  num_images: Optional[int] = None, batch_size: int = 256,
                  progress: bool = True) -> Tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, count) of a dataset split, read once in stored order (no flips).

  The whole split is read by every process (no per-process slicing of the input); with an
  `InceptionFeatures` each process runs Inception on its rows of every batch and the statistics
  are merged across processes, so every process gets the same statistics.

  Args:
    data_config: `config.data`.
    features: images -> features (e.g. an `InceptionFeatures`).
    split: TFDS split (expression), 'train' by default.
    num_images: the first this many images (default: all).
    batch_size: images per batch read.
    progress: show a progress bar.
  """
  data_config = latents_lib.pixel_data_config(data_config)
  total = split_size(data_config, split)
  if num_images is not None:
    if total is not None and num_images > total:
      raise ValueError(f"split {split!r} has {total} images, {num_images} were asked for")
    total = num_images
  batches = pipeline.make_dataset(data_config, split=split, global_batch_size=batch_size, seed=0,
                                  train=False, process_index=0, process_count=1)
  read = []  # Batch sizes, for the count when TFDS could not size the split.

  def images():
    for b in batches:
      read.append(len(b["image"]))
      yield b["image"]

  if not isinstance(features, InceptionFeatures):
    mu, sigma = fid.compute_stats(features, images(), num_images=total, progress=progress)
    return mu, sigma, total if total is not None else sum(read)
  stats, seen = fid.RunningStats(), 0
  with gen.progress_bar(total, f"FID statistics of {split}", progress) as bar:
    for batch in images():
      if total is not None and seen >= total:
        break
      batch = np.asarray(batch[:None if total is None else total - seen], np.float32)
      n = len(batch)
      for start in range(0, n, features.batch_size):
        chunk = batch[start:start + features.batch_size]
        k = min(features.batch_size, n - start)
        if len(chunk) < features.batch_size:
          chunk = np.concatenate([chunk, np.zeros((features.batch_size - len(chunk),
                                                   *chunk.shape[1:]), np.float32)])
        stats.update(features.local_features(chunk, k))
      seen += n
      bar.update(n)
  if total is not None and seen < total:
    raise ValueError(f"image batches ran out after {seen} images; {total} were asked for")
  mu, sigma = stats.combine_processes().result()
  return mu, sigma, seen


def resolve_stats_path(stats_path: Optional[str], field: str = "--fid_stats") -> str:
  """The reference statistics path with '~' expanded.

  Raises:
    FileNotFoundError: no path, or the file does not exist; the message names `field` (the flag
      or config field the path came from) and says how to make the file.
  """
  if not stats_path:
    raise FileNotFoundError(f"{field} is not set: FID needs reference statistics; {_STATS_HELP}")
  path = os.path.expanduser(stats_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{field}: FID reference statistics {path} do not exist; "
                            f"{_STATS_HELP}")
  return path


def load_reference(path: str, features: Optional[Callable] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Reference (mu, sigma) from an .npz; ADM image batches without stats go through `features`."""
  return fid.reference_mu_sigma(fid.load_reference_stats(path), features)


class FIDEvaluator(Evaluator):
  """`config.evals.fid`: FID of the (EMA) model at each step budget, as `fid/steps_<N>`.

  The original evaluates 4,096 samples during training; published numbers are FID-50k
  (`eval.py --mode=fid --num_samples=50000`).
  """

  def __init__(self, exp, workdir, every, *, steps, num_samples, cfg_scale, stats_path,
               inception_path, batch_size, use_ema, seed: int = 0,
               image_size: Optional[int] = inception.IMAGE_SIZE):
    """Reads the reference statistics and Inception weights now, so a bad path fails early.

    Raises:
      FileNotFoundError: `stats_path` is unset or missing, or the Inception weights are.
      ValueError: either file is unreadable.
    """
    super().__init__(exp, workdir, every)
    self.steps, self.num_samples, self.cfg_scale = tuple(steps), num_samples, cfg_scale
    self.use_ema, self.seed = use_ema, seed
    self.stats_path = resolve_stats_path(stats_path, "config.evals.fid.stats_path")
    try:
      self.features, self.inception_path = load_features(inception_path, batch_size=batch_size,
                                                         image_size=image_size)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.evals.fid.inception_path: {e}") from e
    self.reference = load_reference(self.stats_path, self.features)

  def run(self, state, step):
    params = state.ema_params if self.use_ema else state.params
    t0 = time.time()
    values = model_fid(self.exp, params, self.features, self.reference, steps=self.steps,
                       num_images=self.num_samples, cfg_scale=self.cfg_scale, seed=self.seed,
                       progress=False)
    logging.info("step %d: FID-%d %s (%.1f s)", step, self.num_samples, values, time.time() - t0)
    return {f"fid/steps_{n}": v for n, v in values.items()}
