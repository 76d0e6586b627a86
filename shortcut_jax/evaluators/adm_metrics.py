"""The metrics ImageNet papers report beside FID, as ADM's evaluation suite computes them.

ADM's suite (guided-diffusion `evaluations/evaluator.py`, by OpenAI) is what BigGAN-era and
diffusion ImageNet papers (ADM, DiT, MeanFlow, iMF, ...) report: FID, sFID, Inception Score and
precision / recall against a reference batch `.npz` (`arr_0`: uint8 images NHWC, e.g. the 10k
ImageNet images of `VIRTUAL_imagenet256_labeled.npz`; ADM's published batches also hold `mu`,
`sigma`, `mu_s`, `sigma_s`). Here each formula is ADM's:

  * FID: Fréchet distance of the 2048-d pool features (`fid.fid_from_stats`).
  * sFID (`sfid`): the same distance on the spatial features, the first 7 channels of TF's
    `mixed_6/conv` (17 x 17 x 7 = 2023 values; `inception.InceptionV3`, output 'spatial').
  * Inception Score (`inception_score`): softmax over the 1008 logits without the classifier's
    bias (output 'logits_unbiased'), exp(mean KL(p(y|x) || p(y))) in splits of 5000 consecutive
    samples (the last one may be shorter), averaged over the splits.
  * Precision / recall (`precision_recall`, Kynkäänniemi et al. 2019, ADM's `ManifoldEstimator`
    with k = 3): the radius of a feature vector is its distance to its k-th nearest neighbour
    in its own set (itself excluded); precision is the fraction of samples within the radius of
    some reference vector, recall the fraction of reference vectors within the radius of some
    sample (`<=`, on pool features). ADM uses all reference images (10k) and all samples (50k).

Differences from ADM, stated plainly:
  * the network is the library's Flax port of the same TF graph, with pytorch-fid's weights (the
    graph's own values); its input pipeline differs (half-pixel bilinear resize and x/127.5 - 1
    here, TF1's resize without half-pixel centres and (x - 128)/128 in ADM), so features, and
    statistics computed from ADM's file of `mu`/`sigma`/`mu_s`/`sigma_s` (made with TF), are
    not bit-identical; numbers can sit beside published ones as pytorch-fid's FID does beside
    TF's, not to the last digit;
  * pairwise distances are computed in float32 (ADM: float16, falling back to float32 only on
    overflow), so vectors within float16 rounding of a radius may be counted differently;
  * the Fréchet distance always adds 1e-6 to the covariance diagonals (`fid.fid_from_stats`;
    ADM only when its `sqrtm` fails), a change far below the digits reported.

Reference files (`load_reference`): `mu`/`sigma` and `mu_s`/`sigma_s` are used when present
(as ADM does); whatever is missing, and the reference features precision / recall needs, is
computed from `arr_0` with the same network as the samples.
"""

import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from shortcut_jax import config as config_lib
from shortcut_jax import storage
from shortcut_jax.evaluators import fid
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import progress as progress_lib
from shortcut_jax.models import inception
from shortcut_jax.evaluators.precision_recall import (DISTANCE_BATCH, NEAREST_K,  # noqa: F401
                                                     manifold_radii, precision_recall)

Array = Any

METRICS = config_lib.EXTRA_FID_METRICS  # The names `evals.fid.extra_metrics` takes.
SPLIT_SIZE = 5000  # ADM's `compute_inception_score(split_size=5000)`.


def check_metrics(metrics: Sequence[str]) -> Tuple[str, ...]:
  """`metrics` as a tuple without repeats, checked against `METRICS`."""
  metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics or ())
  unknown = [m for m in metrics if m not in METRICS]
  if unknown:
    raise ValueError(f"unknown extra metrics {unknown}; known: {METRICS}")
  return tuple(dict.fromkeys(metrics))


def inception_outputs(metrics: Sequence[str]) -> Tuple[str, ...]:
  """The Inception outputs FID plus `metrics` need (`inception.OUTPUTS` names)."""
  metrics = check_metrics(metrics)
  outputs = ["pool"]
  if "sfid" in metrics:
    outputs.append("spatial")
  if "is" in metrics:
    outputs.append("logits_unbiased")
  return tuple(outputs)


def split_outputs(features: Array, outputs: Sequence[str]) -> Dict[str, np.ndarray]:
  """Splits features concatenated in `outputs` order (`fid_evaluator.InceptionFeatures` with
  `outputs`) into {name: [N, D]}: pool 2048 wide, logits 1008, spatial the rest."""
  features = np.asarray(features)
  widths = {"pool": inception.FEATURE_DIM, "logits_unbiased": inception.NUM_CLASSES,
            "logits": inception.NUM_CLASSES}
  fixed = sum(widths[o] for o in outputs if o != "spatial")
  if "spatial" in outputs:
    widths["spatial"] = features.shape[1] - fixed
  if sum(widths[o] for o in outputs) != features.shape[1] or widths.get("spatial", 1) <= 0:
    raise ValueError(f"features of width {features.shape[1]} do not hold outputs {outputs}")
  out, start = {}, 0
  for o in outputs:
    out[o] = features[:, start:start + widths[o]]
    start += widths[o]
  return out


# --- Inception Score -----------------------------------------------------------------------


def inception_score(logits: Array, split_size: int = SPLIT_SIZE) -> float:
  """ADM's Inception Score of the samples whose classifier logits are `logits`.

  p(y|x) = softmax(logits) per sample; over each split of `split_size` consecutive samples,
  IS = exp(mean_x KL(p(y|x) || mean_x p(y|x))); the result is the mean over splits (the last
  split may be shorter, as in ADM). Computed in float64 from log-probabilities.

  Args:
    logits: [N, C]; for ADM's number, the 'logits_unbiased' Inception output (no bias).
    split_size: samples per split (ADM: 5000).

  Returns:
    The score, 1 for identical predictions, C for confident predictions spread evenly.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] == 0:
    raise ValueError(f"logits must be [N, C] with N >= 1, got shape {logits.shape}")
  if split_size < 1:
    raise ValueError(f"split_size must be positive, got {split_size}")
  top = logits.max(axis=1, keepdims=True)
  log_p = logits - (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))
  scores = []
  for start in range(0, logits.shape[0], split_size):
    part = log_p[start:start + split_size]
    # log p(y) = log mean_x p(y|x), from the log-probabilities so it stays finite where every
    # p(y|x) underflows (those terms are then 0 log 0 = 0).
    top = part.max(axis=0, keepdims=True)
    log_marginal = top + np.log(np.exp(part - top).mean(axis=0, keepdims=True))
    kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores))


# --- sFID ----------------------------------------------------------------------------------


def sfid(samples: Any, reference: Tuple[Array, Array]) -> float:
  """sFID: the Fréchet distance between spatial-feature statistics.

  Args:
    samples: the samples' spatial features [N, D], or their `fid.RunningStats`, or (mu, sigma).
    reference: (mu_s, sigma_s) of the reference spatial features.
  """
  if isinstance(samples, fid.RunningStats):
    mu, sigma = samples.result()
  elif isinstance(samples, tuple):
    mu, sigma = samples
  else:
    stats = fid.RunningStats()
    stats.update(samples)
    mu, sigma = stats.result()
  return fid.fid_from_stats(mu, sigma, *reference)


# --- Precision / recall --------------------------------------------------------------------


# --- Reference batches ---------------------------------------------------------------------


class Reference(NamedTuple):
  """What the metrics compare samples with.

  Attributes:
    mu, sigma: pool-feature statistics (FID).
    mu_s, sigma_s: spatial-feature statistics (sFID), or None when not asked for.
    features: pool features of the reference images [N, 2048] (precision / recall), or None.
  """
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: Optional[np.ndarray] = None
  sigma_s: Optional[np.ndarray] = None
  features: Optional[np.ndarray] = None


def read_reference_file(path: str) -> Dict[str, np.ndarray]:
  """The arrays of a reference `.npz` among mu, sigma, mu_s, sigma_s and arr_0 (local or
  remote, through `storage`)."""
  if not storage.isfile(path):
    raise FileNotFoundError(f"reference file {path} does not exist")
  keys = ("mu", "sigma", "mu_s", "sigma_s", "arr_0")
  try:
    with storage.open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
      out = {k: np.asarray(data[k]) for k in keys if k in data.files}
  except Exception as e:  # zipfile/zlib/OSError/ValueError on a bad file.
    raise ValueError(f"cannot read reference file {path}: not a valid .npz (truncated or "
                     f"corrupt?): {e!r}") from e
  images = out.get("arr_0")
  if images is not None and (images.ndim != 4 or images.shape[-1] != 3):
    raise ValueError(f"{path}: arr_0 has shape {images.shape}; expected uint8 images "
                     "[N, H, W, 3]")
  return out


def load_reference(path: str, feature_fn: Optional[Callable[[Array], Mapping[str, Array]]],
                   metrics: Sequence[str], *, batch_size: int = 100,
                   progress: bool = True) -> Reference:
  """The reference side of FID and `metrics` from an `.npz` (ADM's reference batches, or a
  `mu`/`sigma` file when no metric needs images).

  Stored statistics are used when present (`mu`/`sigma`; `mu_s`/`sigma_s` for sFID, as ADM
  does); the rest is computed from `arr_0` with `feature_fn`, in one pass.

  Args:
    path: the `.npz`.
    feature_fn: images [B, H, W, 3] in [-1, 1] -> {'pool': [B, 2048], 'spatial': [B, D], ...}
      (e.g. `inception.make_feature_fn(variables, outputs=('pool', 'spatial'))`); needed only
      when something must be computed from the images.
    metrics: names from `METRICS`.
    batch_size: reference images per `feature_fn` call.
    progress: show a progress bar.

  Raises:
    ValueError: something needed is neither stored nor computable (no `arr_0`).
  """
  metrics = check_metrics(metrics)
  data = read_reference_file(path)
  want_spatial = "sfid" in metrics and not {"mu_s", "sigma_s"} <= set(data)
  want_pool = not {"mu", "sigma"} <= set(data)
  want_features = "precision_recall" in metrics
  if want_spatial or want_pool or want_features:
    needs = [name for name, wanted in (("FID statistics (mu, sigma)", want_pool),
                                       ("sFID statistics (mu_s, sigma_s)", want_spatial),
                                       ("precision / recall features", want_features)) if wanted]
    if "arr_0" not in data:
      raise ValueError(f"reference {path} has keys {sorted(data)}: the {', '.join(needs)} must "
                       "be computed from reference images, and it has none (arr_0). Use an "
                       "ADM reference batch (uint8 images in arr_0, e.g. guided-diffusion's "
                       "VIRTUAL_imagenet256_labeled.npz).")
    if feature_fn is None:
      raise ValueError(f"reference {path}: pass feature_fn to compute the {', '.join(needs)}")
    images = data["arr_0"]
    pool, spatial, kept = fid.RunningStats(), fid.RunningStats(), []
    t0 = time.time()
    with progress_lib.progress_bar(len(images), "reference features", progress) as bar:
      for start in range(0, len(images), batch_size):
        out = feature_fn(fid.images_to_unit_range(images[start:start + batch_size]))
        pool_batch = np.asarray(out["pool"])
        if want_pool:
          pool.update(pool_batch)
        if want_spatial:
          spatial.update(np.asarray(out["spatial"]))
        if want_features:
          kept.append(pool_batch.astype(np.float32))
        bar.update(pool_batch.shape[0])
    logging.info("reference %s: %s from %d images (%.1f s)", path, ", ".join(needs),
                 len(images), time.time() - t0)
  mu, sigma = pool.result() if want_pool else (np.asarray(data["mu"], np.float64),
                                               np.asarray(data["sigma"], np.float64))
  mu_s = sigma_s = None
  if "sfid" in metrics:
    mu_s, sigma_s = spatial.result() if want_spatial else (
        np.asarray(data["mu_s"], np.float64), np.asarray(data["sigma_s"], np.float64))
  features = np.concatenate(kept) if want_features else None
  return Reference(mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, features=features)


# --- Samples -------------------------------------------------------------------------------


class Accumulator:
  """Streams the samples' Inception outputs (one dict per batch) into FID and `metrics`.

  Memory: the logits (IS, 4 KB per sample) and pool features (precision / recall, 8 KB per
  sample) of every sample are kept: 600 MB for 50,000 samples with both.
  """

  def __init__(self, metrics: Sequence[str]):
    self.metrics = check_metrics(metrics)
    self.pool = fid.RunningStats()
    self.spatial = fid.RunningStats()
    self._logits, self._features = [], []

  def update(self, outputs: Mapping[str, Array]) -> None:
    pool = np.asarray(outputs["pool"])
    self.pool.update(pool)
    if "sfid" in self.metrics:
      self.spatial.update(np.asarray(outputs["spatial"]))
    if "is" in self.metrics:
      self._logits.append(np.asarray(outputs["logits_unbiased"], np.float32))
    if "precision_recall" in self.metrics:
      self._features.append(pool.astype(np.float32))

  def result(self, reference: Reference, *, split_size: int = SPLIT_SIZE, k: int = NEAREST_K,
             distance_batch: int = DISTANCE_BATCH) -> Dict[str, float]:
    """{'fid', and per metric 'is' / 'sfid' / 'precision' and 'recall'}."""
    mu, sigma = self.pool.result()
    out = {"fid": fid.fid_from_stats(mu, sigma, reference.mu, reference.sigma)}
    if "is" in self.metrics:
      out["is"] = inception_score(np.concatenate(self._logits), split_size)
    if "sfid" in self.metrics:
      out["sfid"] = sfid(self.spatial, (reference.mu_s, reference.sigma_s))
    if "precision_recall" in self.metrics:
      out["precision"], out["recall"] = precision_recall(
          reference.features, np.concatenate(self._features), k, distance_batch)
    return out


def model_metrics(exp, params, features, reference: Reference, *, entries: Sequence[Any],
                  num_images: int, metrics: Sequence[str], seed: int = 0,
                  progress: bool = True) -> Dict[str, Dict[str, float]]:
  """FID and `metrics` of generated images per protocol entry, one generation pass each.

  Args:
    exp, params: the experiment and the weights to sample with (`fid_evaluator.protocol_fid`).
    features: a `fid_evaluator.InceptionFeatures` built with `outputs=inception_outputs(...)`.
    reference: from `load_reference`.
    entries: what to sample, each with `key`, `steps` and `cfg_scale` (`guidance.fid_entries`).
    num_images, seed: as `fid_evaluator.protocol_fid`.
    metrics: names from `METRICS`.

  Returns:
    {entry.key: {'fid': ..., 'is': ..., 'sfid': ..., 'precision': ..., 'recall': ...}}. Every
    process gets every sample's features (`InceptionFeatures.batch_features`) and the same
    numbers.
  """
  metrics = check_metrics(metrics)
  outputs = getattr(features, "outputs", ("pool",))
  missing = set(inception_outputs(metrics)) - set(outputs)
  if missing:
    raise ValueError(f"the Inception features lack outputs {sorted(missing)} for {metrics}")
  if "precision_recall" in metrics and num_images <= NEAREST_K:
    raise ValueError(f"precision / recall needs more than {NEAREST_K} samples")
  out = {}
  for entry in entries:
    t0 = time.time()
    acc = Accumulator(metrics)
    desc = f"FID + {'/'.join(metrics)} {entry.steps} steps"
    with progress_lib.progress_bar(num_images, desc, progress) as bar:
      for samples, count in gen.generate_batches(exp, params, num_images=num_images,
                                                 num_steps=entry.steps,
                                                 cfg_scale=entry.cfg_scale, seed=seed,
                                                 batch_size=features.batch_size,
                                                 mesh=features.mesh):
        images = gen.decode(exp, samples, features.mesh)
        acc.update(split_outputs(features.batch_features(images, count), outputs))
        bar.update(count)
    out[entry.key] = acc.result(reference)
    logging.info("%d steps, cfg %s, %d images: %s (%.1f s)", entry.steps, entry.cfg_scale,
                 num_images, out[entry.key], time.time() - t0)
  return out


def feature_dict_fn(features) -> Callable[[Array], Dict[str, np.ndarray]]:
  """images -> {name: array} from an `InceptionFeatures` built with `outputs`."""
  outputs = getattr(features, "outputs", ("pool",))
  return lambda images: split_outputs(features(images), outputs)
