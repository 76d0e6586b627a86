"""Generating images from a trained model: fixed noise seeds, one condition per image
(`conditions`), data parallel over a mesh (`batch_rows`), decoded to images.
"""

import functools
from typing import Iterator, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax import sampling
from shortcut_jax.parallel import sharding
from shortcut_jax.evaluators.batch_rows import (is_multi_process, local_part, put_batch,
                                                round_up_batch, to_host)
from shortcut_jax.evaluators.conditions import is_guidable, sample_cond
from shortcut_jax.evaluators.progress import progress_bar
from shortcut_jax.objectives.flow_path import Source, sample_source


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
