"""Generating images from a trained model: fixed noise seeds, one condition per image, uint8 output.

The conditions of image i are `sample_cond(exp, n)[key][i]` for every condition kind the model
takes: for image-conditioned models (super-resolution) the conditioning images of the held-out
split in stored order (repeated when it has fewer) with those examples' own labels; for other
models labels spread evenly over the classes.
"""

import contextlib
import functools
import io
import os
from typing import Dict, Iterator, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax import latents as latents_lib
from shortcut_jax import sampling
from shortcut_jax import storage
from shortcut_jax import text_encoders
from shortcut_jax import sharding
from shortcut_jax.objectives.flow_path import Source, sample_source


def is_conditional(config) -> bool:
  """Whether the model was trained with labels (CelebA-style unconditional runs were not)."""
  return (config.data.num_classes > 1 and config.objective.class_dropout_prob < 1.0
          and config.objective.cfg_scale != 0)


def sample_labels(config, num_images: int) -> np.ndarray:
  """Labels spread evenly over the classes (0, 1, …, C-1, 0, 1, …); the null label if unconditional."""
  if not is_conditional(config):
    return np.full((num_images,), config.data.num_classes, np.int32)
  return (np.arange(num_images) % config.data.num_classes).astype(np.int32)


def held_out_examples(config, num_images: int, split: str = "test") -> Dict[str, np.ndarray]:
  """The first `num_images` examples of `split` (evaluation preprocessing, stored order; the
  split is cycled when smaller), every key the pixel pipeline yields ('image', 'label',
  'cond_image', 'embedding'): a run on precomputed latents reads the pixel dataset they were
  encoded from. Read whole by every process, so all processes agree."""
  from shortcut_jax.data import pipeline  # TensorFlow is only needed here.
  data_config = latents_lib.pixel_data_config(config.data)
  parts, have = [], 0
  while have < num_images:
    for batch in pipeline.make_dataset(data_config, split=split, global_batch_size=256, seed=0,
                                       train=False, process_index=0, process_count=1):
      parts.append(batch)
      have += len(batch["image"])
      if have >= num_images:
        break
  return {k: np.concatenate([p[k] for p in parts])[:num_images] for k in parts[0]}


def example_labels(config, num_images: int,
                   examples: Optional[Mapping[str, np.ndarray]] = None,
                   labels=None) -> np.ndarray:
  """The labels of `num_images` generated images (int32), by this policy:

  * a model trained without labels (`is_conditional` false): the null label, always;
  * `labels` given (an int or one per image): those;
  * images made from examples (super-resolution of held-out images): each example's own label;
    examples without labels (a user's images, a cascade's input: the class is unknown): the
    null label, i.e. the model's unconditional velocity for that condition (trained by label
    dropout, `objective.class_dropout_prob`);
  * no examples (a generator): `sample_labels`, spread evenly over the classes.
  """
  if not is_conditional(config):
    return sample_labels(config, num_images)
  if labels is not None:
    return np.broadcast_to(np.asarray(labels, np.int32), (num_images,)).copy()
  if examples is not None:
    if "label" in examples:
      return np.asarray(examples["label"], np.int32)[:num_images]
    return np.full((num_images,), config.data.num_classes, np.int32)
  return sample_labels(config, num_images)


def sample_cond(exp, num_images: int, split: str = "test",
                examples: Optional[Mapping[str, np.ndarray]] = None,
                embedding: Optional[np.ndarray] = None,
                labels=None) -> Dict[str, np.ndarray]:
  """The conditions of `num_images` generated images, for every kind the model takes (in the
  model's space: a conditioning image is encoded to latents in latent space). Images come from
  held-out examples; labels follow `example_labels` (the examples' own labels where the
  conditions come from examples, the null label for examples without labels or a model trained
  without labels, else spread evenly over the classes); embeddings come from the text model's
  own prompts (`text_encoders.default_prompts`) or else the held-out captions.

  Args:
    exp: the experiment.
    num_images: rows.
    split: where image conditions come from (`held_out_examples`).
    examples: those held-out examples when the caller already read them (their 'label', when
      they have one, is each image's label).
    embedding: float32 [num_images, embedding_dim] to use instead (e.g. `--prompts`).
    labels: the label of every image (an int, or one per image) instead of the policy above.
  """
  keys = exp.model.conditioning.keys
  if "embedding" in keys and embedding is None:
    prompts = text_encoders.default_prompts(exp.config.data, num_images)
    if prompts is not None:
      embedding = text_encoders.encode_prompts(exp.config.data, prompts)
  needs_examples = "cond_image" in keys or ("embedding" in keys and embedding is None)
  if needs_examples and examples is None:
    examples = held_out_examples(exp.config, num_images, split)
  cond = {"label": example_labels(exp.config, num_images, examples, labels)}
  if "cond_image" in keys:
    pixels = np.asarray(examples["cond_image"])[:num_images]
    cond["cond_image"] = np.asarray(latents_lib.encode_cond(exp.config, {"cond_image": pixels})[
        "cond_image"])
  if "embedding" in keys:
    if embedding is None:
      embedding = examples["embedding"]
    cond["embedding"] = np.asarray(embedding, np.float32)[:num_images]
  return cond


def intended_classes(exp, labels: np.ndarray) -> Optional[np.ndarray]:
  """The class each `sample_cond` image was asked for, for class accuracy: its label for a
  label-conditional model, its prompt's class where the text model knows it, else None."""
  if is_conditional(exp.config):
    return labels
  if "embedding" in exp.model.conditioning.keys:
    prompts = text_encoders.default_prompts(exp.config.data, len(labels))
    if prompts is not None:
      return text_encoders.prompt_classes(exp.config.data, prompts)
  return None


def is_guidable(exp) -> bool:
  """Whether classifier-free guidance applies: a label-conditional model, or one trained with
  dropout of another condition kind (its null branch is then meaningful)."""
  if is_conditional(exp.config):
    return True
  return any(k.guided for k in exp.model.conditioning.kinds if k.key != "label")


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (clipped)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def data_mesh() -> Mesh:
  """A 1-D mesh over every device of every process; batches are split along its `data` axis.

  The devices are ordered by process (process 0's first), so every process holds one contiguous
  block of rows of each batch (`local_rows`). With one process: all its devices.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (sharding.DATA_AXIS,))


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices only (work that one process does alone)."""
  return Mesh(np.asarray(jax.local_devices()), (sharding.DATA_AXIS,))


def is_multi_process(mesh: Mesh) -> bool:
  """Whether `mesh` has devices of other processes (its arrays are then not fully addressable)."""
  return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def local_rows(mesh: Mesh, batch_size: int) -> Tuple[int, int]:
  """The rows [lo, hi) of a `batch_size`-row batch split over `mesh` that this process holds."""
  spec = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  spans = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                  for s in spec.addressable_devices_indices_map((batch_size,)).values()})
  lo, hi = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != hi - lo:
    raise ValueError(f"this process's rows of the mesh are not contiguous: {spans}")
  return lo, hi


def put_batch(x, mesh: Mesh) -> jax.Array:
  """A batch (the same host array on every process) split over `mesh`'s data axis; with several
  processes each one transfers only its own rows (`local_rows`)."""
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  if isinstance(x, jax.Array) and x.sharding == data:
    return x
  if not is_multi_process(mesh):
    return jax.device_put(x, data)
  x = np.asarray(x)
  lo, hi = local_rows(mesh, x.shape[0])
  return jax.make_array_from_process_local_data(data, x[lo:hi], x.shape)


def local_part(x: jax.Array) -> Tuple[np.ndarray, int]:
  """This process's rows of a batch split along its first axis, on the host, and the index of
  the first (0 for a fully addressable array: all of it)."""
  if x.is_fully_addressable:
    return np.asarray(x), 0
  shards = {}
  for s in x.addressable_shards:
    shards.setdefault(s.index[0].start or 0, s)
  starts = sorted(shards)
  return np.concatenate([np.asarray(shards[k].data) for k in starts]), starts[0]


def to_host(x) -> np.ndarray:
  """Every row of a batch on every process (gathered across processes when it is split)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def decode(exp, samples: jax.Array, mesh: Optional[Mesh] = None) -> jax.Array:
  """`exp.to_images(samples)` (the VAE decode of a latent model; the identity for pixels),
  keeping the batch split over `mesh`: with several processes each one decodes its own rows."""
  if mesh is None or not is_multi_process(mesh) or exp.config.data.get("latents",
                                                                        "none") == "none":
    return exp.to_images(samples)
  local, _ = local_part(samples)
  images = np.asarray(exp.to_images(local))
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  return jax.make_array_from_process_local_data(data, images,
                                                (samples.shape[0], *images.shape[1:]))


def round_up_batch(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh size that is >= batch_size."""
  if batch_size <= 0:
    raise ValueError(f"batch size must be positive, got {batch_size}")
  return -(-batch_size // mesh.size) * mesh.size


@functools.lru_cache(maxsize=16)
def _noise_fn(shape: Tuple[int, ...], mesh: Optional[Mesh], source: Source = Source()):
  """Jitted `(key, idx [B], cond_image [B, ...] | None) -> rows source.draw(fold_in(key, idx[i]),
  shape, cond row i)`, split over `mesh`'s data axis when given; cached so that repeated
  generation compiles it once per shape."""
  def row(key, i, cond_image):
    cond = None if cond_image is None else {"cond_image": cond_image}
    return sample_source(jax.random.fold_in(key, i), shape, source, cond)
  noise = jax.vmap(row, in_axes=(None, 0, 0))
  if mesh is None:
    return jax.jit(noise)
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  return jax.jit(noise, in_shardings=(NamedSharding(mesh, PartitionSpec()), data, data),
                 out_shardings=data)


@functools.lru_cache(maxsize=16)
def _keys_fn(mesh: Optional[Mesh]):
  """Jitted `(key, idx [B]) -> keys [B]`, row i `fold_in(key, idx[i])` (image idx[i]'s key: its
  source draw's and, for a sampler that draws noise, every step's), split over `mesh`."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
  if mesh is None:
    return jax.jit(keys)
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  return jax.jit(keys, in_shardings=(NamedSharding(mesh, PartitionSpec()), data),
                 out_shardings=data)


def source_noise(exp, key, idx, cond: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
  """The source samples of images `idx` (int [B]): row i from `fold_in(key, idx[i])` (and, for a
  coupling source, from row i of `cond['cond_image']`, in the model's space)."""
  return _noise_fn(tuple(exp.image_shape), None, exp.source)(
      key, jnp.asarray(np.asarray(idx, np.int32)), _source_cond(exp, cond))


def _source_cond(exp, cond):
  """The condition rows a coupling source starts from (None for noise sources)."""
  if not exp.source.needs_cond:
    return None
  if cond is None or "cond_image" not in cond:
    raise ValueError(f"source {exp.source.name!r} needs the conditioning image of every sample")
  return cond["cond_image"]


def generate_batches(exp, params, *, num_images: int, num_steps: int,
                     cfg_scale: Optional[float], seed: int = 0, batch_size: int = 256,
                     mesh: Optional[Mesh] = None,
                     cond: Optional[Mapping[str, np.ndarray]] = None
                     ) -> Iterator[Tuple[jax.Array, int]]:
  """Samples `num_images` images batch by batch (50,000 images never sit in memory at once).

  Image i starts from the source sample `exp.source.draw(fold_in(PRNGKey(seed), i), ...)` (the
  run's source: Gaussian noise, zeros for a regressor, or the image's own conditioning image
  for a coupling flow) and gets the conditions
  `cond[key][i]`; a sampler that draws fresh noise (the consistency sampler) draws step j's
  from `fold_in(fold_in(PRNGKey(seed), i), j)` (`sampling.step_noise`). So the same seed gives
  the same images for any batch size, any mesh and any step count (rows of a grid are
  comparable across step budgets). Every batch has the same size
  (the last one padded) so the sampler compiles once.

  Args:
    exp: the `experiment.Experiment`.
    params: the network weights.
    num_images: images in all.
    num_steps: sampling steps N.
    cfg_scale: guidance weight; ignored for an unconditional model.
    seed: noise seed.
    batch_size: images per sampler call. Without a mesh it is capped at `num_images`; with one
      it is rounded up to a multiple of the device count.
    mesh: a 1-D device mesh (`data_mesh()`) to run data parallel on: params are replicated onto
      it and every batch is split along its axis. A mesh over several processes needs every
      process to call this with the same arguments (host params, e.g. from
      `experiment.evaluator_state`); each one then computes only its rows of each batch
      (`local_rows`, `local_part`). None: the arrays stay where they are (params may then be
      sharded over any mesh, several processes included).
    cond: host arrays of conditions, `num_images` rows each (default: `sample_cond`).

  Yields:
    (samples [batch, H, W, C] float32 (not clipped; latents in latent space, see
    `exp.to_images`), number of valid leading rows).
  """
  config = exp.config
  exp.objective.check_steps([num_steps])
  cond = sample_cond(exp, num_images) if cond is None else dict(cond)
  short = {k: len(v) for k, v in cond.items() if len(v) < num_images}
  if short:
    raise ValueError(f"cond arrays {short} have fewer rows than num_images={num_images}")
  if cfg_scale is not None and not is_guidable(exp):
    cfg_scale = None
  sampler = sampling.make_sampler(exp.model, num_steps, config.objective.denoise_timesteps,
                                  exp.objective.uses_level, cfg_scale, objective=exp.objective)
  key = jax.random.PRNGKey(seed)
  if mesh is None:
    batch_size = min(batch_size, num_images)
    put, noise_fn = jnp.asarray, _noise_fn(tuple(exp.image_shape), None, exp.source)
    keys_fn = _keys_fn(None)
  else:
    # The sampler has no shardings of its own: it runs data parallel because its inputs are.
    # With several processes (a mesh over all of them) each process places only its rows of
    # every batch: it generates its share of the images, and nothing runs twice.
    batch_size = round_up_batch(batch_size, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(params, replicated)
    key = jax.device_put(np.asarray(key), replicated)
    put = lambda x: put_batch(x, mesh)
    noise_fn = _noise_fn(tuple(exp.image_shape), mesh, exp.source)
    keys_fn = _keys_fn(mesh)
  for start in range(0, num_images, batch_size):
    idx = np.arange(start, min(start + batch_size, num_images))
    n = len(idx)
    idx = np.concatenate([idx, np.full(batch_size - n, idx[-1])])
    rows = {k: put(np.asarray(v)[idx]) for k, v in cond.items()}
    placed = put(idx.astype(np.int32))
    x0 = noise_fn(key, placed, _source_cond(exp, rows))
    yield sampler(params, x0, rows, keys_fn(key, placed)), n


def generate(exp, params, *, num_images: int, num_steps: int, cfg_scale: Optional[float],
             seed: int = 0, batch_size: int = 256,
             cond: Optional[Mapping[str, np.ndarray]] = None, mesh: Optional[Mesh] = None,
             progress: Optional[bool] = None, desc: str = "sampling"
             ) -> Tuple[np.ndarray, np.ndarray]:
  """All of `generate_batches` on the host (decoded to images).

  Args:
    exp, params, num_images, num_steps, cfg_scale, seed, batch_size, cond: as for
      `generate_batches`.
    mesh: None: on the arrays' own devices (one process may call it alone). `data_mesh()`: data
      parallel over every device of every process; every process must call it, generates its
      share, and gets all the images back.
    progress: show a progress bar (process 0); None: the `progress_bars()` default.
    desc: the bar's label.

  Returns:
    (images float32 NHWC in [-1, 1] (not clipped; decoded by the VAE in latent space),
    labels int32).
  """
  cond = sample_cond(exp, num_images) if cond is None else cond
  if mesh is not None:
    batch_size = min(batch_size, num_images)
  out = []
  with progress_bar(num_images, desc, progress) as bar:
    for x, n in generate_batches(exp, params, num_images=num_images, num_steps=num_steps,
                                 cfg_scale=cfg_scale, seed=seed, batch_size=batch_size,
                                 cond=cond, mesh=mesh):
      out.append(to_host(decode(exp, x, mesh))[:n])
      bar.update(n)
  return np.concatenate(out), np.asarray(cond["label"])


_PROGRESS = [False]  # The default of `progress=None`: off in training, on in eval.py's modes.


def progress_bars(fn):
  """Decorator: progress bars default to on while `fn` runs (the offline modes of eval.py)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    previous, _PROGRESS[0] = _PROGRESS[0], True
    try:
      return fn(*args, **kwargs)
    finally:
      _PROGRESS[0] = previous
  return wrapped


class _NoBar:

  def update(self, n):
    del n


@contextlib.contextmanager
def progress_bar(total: Optional[int], desc: str, show: Optional[bool] = None, unit: str = "img"):
  """The one progress bar of long offline work (sampling, FID, SR metrics): images done, rate
  and ETA, on process 0 only (`fid.progress_bar`, tqdm). A context manager yielding an object
  with `update(n)`; a no-op when `show` is False (None: the `progress_bars` default) or tqdm is
  missing."""
  from shortcut_jax.evaluators import fid  # pylint: disable=g-import-not-at-top
  show = _PROGRESS[0] if show is None else show
  bar = fid.progress_bar(total, desc, unit=unit) if show and jax.process_index() == 0 else None
  try:
    yield bar if bar is not None else _NoBar()
  finally:
    if bar is not None:
      bar.close()


def image_grid(images_uint8: np.ndarray, cols: Optional[int] = None) -> np.ndarray:
  """Tiles NHWC uint8 images into one HWC image with a 1-pixel border."""
  n, h, w, c = images_uint8.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images_uint8[i]
  return grid


def image_bytes(image_hwc: np.ndarray, upscale: int = 1, fmt: str = "PNG") -> bytes:
  """A uint8 HWC image (C = 1, 3 or 4) encoded as a `fmt` file (each pixel repeated `upscale`
  times along both axes)."""
  from PIL import Image
  if upscale > 1:
    image_hwc = image_hwc.repeat(upscale, 0).repeat(upscale, 1)
  if image_hwc.shape[-1] == 1:
    image_hwc = image_hwc[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image_hwc).save(buffer, format=fmt)
  return buffer.getvalue()


def save_png(path: str, image_hwc: np.ndarray, upscale: int = 1) -> None:
  """Writes an image file (local or remote, `storage`); the format follows the name's suffix
  as PIL knows it (PNG when it knows none)."""
  from PIL import Image
  fmt = Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
  storage.write_bytes(path, image_bytes(image_hwc, upscale, fmt))

