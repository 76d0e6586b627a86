"""FID of a model or a dataset, computed as the original code computes it (docs/evaluation.md,
FID), run sharded over every device of every process.

`fid.py` holds the statistics and the distance; this module feeds them:

  * `InceptionFeatures`: the FID InceptionV3 jitted with explicit shardings. Every batch is
    split along its first axis over a 1-D mesh of every device (`batch_rows.data_mesh`); the weights
    are replicated. Grey images (digits) are repeated to 3 channels first.
  * Generation is `generate.generate_batches` on the same mesh as Inception: streamed, with
    fixed per-image seeds, data parallel.
  * `decode`: turns a model's output into pixels before Inception. The identity for pixel
    models; the samples of a latent model (`data.latents` 'online' or 'precomputed') are
    decoded by the config's frozen VAE (`exp.to_images`, `latents.to_images`), inside the same
    sharded loop. Reference statistics are always of pixel images.
  * `model_stats` / `dataset_stats`: (mu, sigma) of generated images or of a dataset split
    (each process reads its own part of the split, `split_part`).
  * `FIDEvaluator`: the in-training evaluator (`config.evals.fid`), logging `fid/steps_<N>`.
    Reference statistics and Inception weights are read when it is constructed, so a missing
    file stops the run before its first training step.

Scope of the sharding: every device of every process. The mesh (`batch_rows.data_mesh()`) spans all
processes; each process generates its rows of every batch (its share of the fixed per-image
seeds: image i always starts from `fold_in(PRNGKey(seed), i)` with conditions `cond[k][i]`),
runs Inception on them, and accumulates the features of its rows only; the float64 statistics
are then merged across processes (`fid.RunningStats.combine_processes`), so the FID equals the
one-process value on the same seeds (tests/test_sharded_eval.py). Every process must take part
(the in-training evaluator runs on all of them; params are host copies,
`experiment.evaluator_state`). A dataset split is read the same way: process p reads only its
part (`tfds.split_for_jax_process`, as training does), which is its rows of every batch.

Files (reference statistics, Inception weights) may be local or remote (`storage`).
"""

import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from shortcut_jax.core import guidance
from shortcut_jax import storage
from shortcut_jax.data import catalog
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators import adm_metrics
from shortcut_jax.evaluators import fid
from shortcut_jax import latents as latents_lib
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import progress as progress_lib
from shortcut_jax.evaluators import conditions
from shortcut_jax.evaluators.base import Evaluator
from shortcut_jax.models import inception
from shortcut_jax.evaluators.inception_features import (InceptionFeatures, load_features)  # noqa: F401

_STATS_HELP = ("compute reference statistics with `python eval.py --mode=fid_stats "
               "--config=<the training config> --out=<stats.npz>`, or use the original's / "
               "pytorch-fid's / ADM's reference .npz (docs/evaluation.md, FID)")


def decode(exp, samples: jax.Array, mesh: Optional[Mesh] = None) -> jax.Array:
  """Model output -> images in [-1, 1] for Inception.

  The identity for pixel models; a latent model decodes its latents with the VAE here,
  inside the same sharded loop (with several processes: each its own rows).
  """
  return gen.decode(exp, samples, mesh)


def model_stats(exp, params, features: InceptionFeatures, *, num_images: int, num_steps: int,
                cfg_scale: Optional[float], seed: int = 0, progress: bool = True
                ) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of the Inception features of `num_images` generated images."""
  stats = fid.RunningStats()
  with progress_lib.progress_bar(num_images, f"FID {num_steps} steps", progress) as bar:
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


def protocol_fid(exp, params, features: InceptionFeatures,
                 reference: Tuple[np.ndarray, np.ndarray], *, entries: Sequence[guidance.Entry],
                 num_images: int, seed: int = 0, progress: bool = True) -> Dict[str, float]:
  """FID against `reference` for each entry of an FID protocol (`guidance.fid_entries`: its
  steps and guidance); {entry.key: fid}."""
  out = {}
  for entry in entries:
    t0 = time.time()
    mu, sigma = model_stats(exp, params, features, num_images=num_images, num_steps=entry.steps,
                            cfg_scale=entry.cfg_scale, seed=seed, progress=progress)
    out[entry.key] = fid.fid_from_stats(mu, sigma, *reference)
    logging.info("FID %d steps, cfg %s, %d images: %.4f (%.1f s)", entry.steps,
                 "1" if entry.cfg_scale is None else f"{entry.cfg_scale:g}", num_images,
                 out[entry.key], time.time() - t0)
  return out


def split_size(data_config, split: str) -> Optional[int]:
  """Examples in `split` (TFDS split expressions allowed), or None when unknown."""
  try:
    return int(catalog.get_builder(data_config).info.splits[split].num_examples)
  except Exception:  # An expression TFDS cannot size: stream without a total.
    return None


def part_sizes(data_config, split: str, process_count: int) -> List[int]:
  """Examples in each process's part of `split` (`tfds.split_for_jax_process`: contiguous
  parts in process order, the larger ones first)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = catalog.get_builder(data_config).info.splits
  known = list(splits.keys())
  if split.split("[")[0] not in known:
    raise ValueError(f"split {split!r} not in dataset {data_config.name!r} (splits: {known})")
  return [int(splits[tfds.split_for_jax_process(split, process_index=p,
                                                process_count=process_count)].num_examples)
          for p in range(process_count)]


def split_part(data_config, split: str, *, batch_size: int, process_index: int,
               process_count: int, num_images: Optional[int] = None
               ) -> Iterator[Tuple[np.ndarray, int]]:
  """Process `process_index`'s part of `split`, read once in stored order (no flips).

  The split is cut into `process_count` contiguous parts (`tfds.split_for_jax_process`, as
  training reads it); in process order they are the whole split, each example once. A process
  reads only its part, in batches of `batch_size // process_count` rows: the last ones padded
  with zero images, and every process gets the same number of batches (the batch of every
  process together is one global batch, whose rows a process holds are its own).

  Args:
    data_config: `config.data` (a pixel dataset).
    split: TFDS split (expression; without '+' when `num_images` is given to several parts).
    batch_size: global batch size; a multiple of `process_count`.
    process_index, process_count: which part, of how many.
    num_images: only the first this many examples of the split (default: all).

  Yields:
    (images float32 [batch_size // process_count, H, W, C] in [-1, 1], count): the first
    `count` rows are examples of the part, the others zero images (padding).
  """
  sizes = part_sizes(data_config, split, process_count)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  if num_images is None:
    keep = sizes
  else:
    if "+" in split and process_count > 1:
      raise ValueError(f"num_images with the combined split {split!r}: write the slice into "
                       "the split expression instead")
    keep = [max(0, min(n, num_images - int(s))) for n, s in zip(sizes, starts)]
  local = batch_size // process_count
  num_batches = -(-max(keep) // local)
  remaining = keep[process_index]
  batches = pipeline.make_dataset(data_config, split=split, global_batch_size=batch_size,
                                  seed=0, train=False, process_index=process_index,
                                  process_count=process_count, pad_remainder=True)
  for _, batch in zip(range(num_batches), batches):
    count = min(remaining, local)
    remaining -= count
    images = np.array(batch["image"], np.float32)
    images[count:] = 0.0  # Padding, or examples past `num_images`.
    yield images, count


def _rows_are_process_parts(features: InceptionFeatures, count: int) -> bool:
  """Whether process p holds rows [p b, (p + 1) b) of every batch of `features`, b = batch size
  / `count` (equal device counts on a mesh ordered by process). The same answer on every
  process: it looks at every device of the mesh."""
  size = features.batch_size
  if size % count:
    return False
  local, rows = size // count, {}
  for device, index in features.data_sharding.devices_indices_map((size,)).items():
    start, stop = index[0].start or 0, size if index[0].stop is None else index[0].stop
    rows.setdefault(device.process_index, []).append((start, stop))
  for p in range(count):
    spans = sorted(rows.get(p, []))
    if (not spans or spans[0][0] != p * local or spans[-1][1] != (p + 1) * local
        or sum(b - a for a, b in spans) != local):
      return False
  return True


def dataset_stats(data_config, features: Callable[[Any], np.ndarray], *, split: str = "train",
                  num_images: Optional[int] = None, batch_size: int = 256,
                  progress: bool = True) -> Tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, count) of a dataset split, read once in stored order (no flips).

  Each process reads only its part of the split (`split_part`) and accumulates the features of
  its examples; the statistics are then merged across processes
  (`fid.RunningStats.combine_processes`), so every process gets the statistics of the whole
  split. With several processes every one must call this (a collective). With an
  `InceptionFeatures` a process's part of each batch is its rows of the network's global batch
  (`InceptionFeatures.process_local_features`); any other `features` runs on the process's own
  examples.

  Args:
    data_config: `config.data`.
    features: images -> features (e.g. an `InceptionFeatures`).
    split: TFDS split (expression), 'train' by default.
    num_images: the first this many images (default: all).
    batch_size: images per global batch read (an `InceptionFeatures`' own batch size is used
      with one).
    progress: show a progress bar (process 0, its part).
  """
  data_config = latents_lib.pixel_data_config(data_config)
  total = whole = sum(part_sizes(data_config, split, 1))
  if num_images is not None:
    if num_images > total:
      raise ValueError(f"split {split!r} has {total} images, {num_images} were asked for")
    total = num_images
  inception_net = isinstance(features, InceptionFeatures)
  index, count = jax.process_index(), jax.process_count()
  if inception_net:
    batch_size = features.batch_size
    parts_fit = _rows_are_process_parts(features, count)
  else:
    batch_size = -(-batch_size // count) * count
    parts_fit = True
  if not parts_fit or whole < count:
    # Processes with unequal device counts, or fewer examples than processes: every process
    # reads the whole split (an `InceptionFeatures` still keeps the features of its rows).
    index, count = 0, 1
  parts = split_part(data_config, split, batch_size=batch_size, process_index=index,
                     process_count=count, num_images=num_images)
  stats = fid.RunningStats()
  desc = f"FID statistics of {split}" + (f" (part {index + 1}/{count})" if count > 1 else "")
  with progress_lib.progress_bar(total if count == 1 else None, desc, progress) as bar:
    for images, n in parts:
      if not inception_net:
        if n:
          stats.update(np.asarray(features(images[:n])))
      elif count == jax.process_count():
        stats.update(features.process_local_features(images, n))
      else:  # Whole batches on every process (see above): this process's valid rows.
        stats.update(features.local_features(images, n))
      bar.update(n)
  # Every process has seen its part (its rows); without parts a plain `features` saw all.
  merged = stats.combine_processes() if inception_net or count > 1 else stats
  if merged.count != total:
    raise ValueError(f"read {merged.count} images of split {split!r}, expected {total}")
  mu, sigma = merged.result()
  if progress:
    logging.info("FID statistics of %s: %d images", split, merged.count)
  return mu, sigma, merged.count


def resolve_stats_path(stats_path: Optional[str], field: str = "--fid_stats") -> str:
  """The reference statistics path (local, with '~' expanded, or remote).

  Raises:
    FileNotFoundError: no path, or the file does not exist; the message names `field` (the flag
      or config field the path came from) and says how to make the file.
  """
  if not stats_path:
    raise FileNotFoundError(f"{field} is not set: FID needs reference statistics; {_STATS_HELP}")
  path = stats_path if storage.is_remote(stats_path) else os.path.expanduser(stats_path)
  if not storage.isfile(path):
    raise FileNotFoundError(f"{field}: FID reference statistics {path} do not exist; "
                            f"{_STATS_HELP}")
  return path


def load_reference(path: str, features: Optional[Callable] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Reference (mu, sigma) from an .npz; ADM image batches without stats go through `features`."""
  return fid.reference_mu_sigma(fid.load_reference_stats(path), features)


class FIDEvaluator(Evaluator):
  """`config.evals.fid`: FID of each entry of the FID protocol (`guidance.fid_entries`), as
  `fid/steps_<key>`: `fid/steps_<N>` for each step budget, and with `protocol='original'`
  also `fid/steps_<M>_cfg<w>` (M = objective.denoise_timesteps).

  The original evaluates 4,096 samples during training; published numbers are FID-50k
  (`eval.py --mode=fid --num_samples=50000`).

  `extra_metrics` (`adm_metrics.METRICS`: 'is', 'sfid', 'precision_recall') adds ADM's metrics
  of the same samples as `is/steps_<key>`, `sfid/steps_<key>`, `precision/steps_<key>` and
  `recall/steps_<key>` (the reference must then be an ADM batch where images are needed).
  """

  def __init__(self, exp, workdir, every, *, steps, num_samples, cfg_scale, stats_path,
               inception_path, batch_size, use_ema, protocol: str = "guided", seed: int = 0,
               image_size: Optional[int] = inception.IMAGE_SIZE,
               extra_metrics: Sequence[str] = ()):
    """Reads the reference statistics and Inception weights now, so a bad path fails early.

    `cfg_scale` has the sampler's meaning (None or 1 conditional, 0 unconditional, else guided);
    `use_ema` None takes the protocol's weights (`guidance.protocol_use_ema`).

    Raises:
      FileNotFoundError: `stats_path` is unset or missing, or the Inception weights are.
      ValueError: either file is unreadable.
    """
    super().__init__(exp, workdir, every)
    self.steps, self.num_samples, self.cfg_scale = tuple(steps), num_samples, cfg_scale
    self.protocol = protocol
    self.use_ema, self.seed = guidance.protocol_use_ema(protocol, use_ema), seed
    self.entries = guidance.fid_entries(protocol, self.steps, cfg_scale,
                                        exp.config.objective.denoise_timesteps,
                                        conditions.is_guidable(exp))
    self.extra_metrics = adm_metrics.check_metrics(extra_metrics)
    self.stats_path = resolve_stats_path(stats_path, "config.evals.fid.stats_path")
    try:
      self.features, self.inception_path = load_features(
          inception_path, batch_size=batch_size, image_size=image_size,
          outputs=adm_metrics.inception_outputs(self.extra_metrics))
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.evals.fid.inception_path: {e}") from e
    if self.extra_metrics:
      self.reference = adm_metrics.load_reference(
          self.stats_path, adm_metrics.feature_dict_fn(self.features), self.extra_metrics,
          batch_size=self.features.batch_size, progress=False)
    else:
      self.reference = load_reference(self.stats_path, self.features)

  def run(self, state, step):
    params = state.ema_params if self.use_ema else state.params
    t0 = time.time()
    if self.extra_metrics:
      values = adm_metrics.model_metrics(self.exp, params, self.features, self.reference,
                                         entries=self.entries, num_images=self.num_samples,
                                         metrics=self.extra_metrics, seed=self.seed,
                                         progress=False)
      logging.info("step %d: FID-%d and %s %s (%.1f s)", step, self.num_samples,
                   self.extra_metrics, values, time.time() - t0)
      return {f"{name}/steps_{k}": v for k, d in values.items() for name, v in d.items()}
    values = protocol_fid(self.exp, params, self.features, self.reference, entries=self.entries,
                          num_images=self.num_samples, seed=self.seed, progress=False)
    logging.info("step %d: FID-%d %s (%.1f s; %s)", step, self.num_samples, values,
                 time.time() - t0, guidance.describe(self.protocol, self.entries, self.use_ema))
    return {f"fid/steps_{k}": v for k, v in values.items()}
