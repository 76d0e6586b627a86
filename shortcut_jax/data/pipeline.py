"""Input pipeline: `make_dataset` (training and evaluation batches) and `dataset_info`.

Batches are numpy dicts `{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}`, with
`b = global_batch_size // process_count`: each process reads its own, disjoint slice of the
split (`tfds.split_for_jax_process`) and the trainer assembles the global batch.

Image size. With `data.low_res_factor` = 0 (the default) the stored image is resized to
`data.image_size` (antialiased bilinear; a no-op at the native size). Super-resolution
(`data.low_res_factor` = f > 0) instead *crops* `data.image_size` pixels from the stored image,
so the HR target keeps the stored image's full detail: a random crop (and the dataset's random
flip) in training, the central crop in evaluation. The batch then also holds
`'cond_image'`: float32 [b, H, W, C], the HR `image` downsampled by f and upsampled back to
H×W (antialiased bicubic both ways, clipped to [-1, 1]; `low_res.cond_image_tf`, identical
to the numpy/jax `low_res.cond_image` that evaluation applies to arbitrary images).

Precomputed latents (`data.latents='precomputed'`). The batches come from the encoded dataset
in `data.latents_dir` (written once by `python -m shortcut_jax.tools.encode_dataset`, layout in
`latent_dataset`) instead of the pixel dataset: `{'latent_mean', 'latent_std': float32
[b, h, w, c] (the VAE posterior of the image, unscaled; the train step samples
`vae.sample_latents(mean, std, key)`), 'label': int32 [b]}`, with the same order, resumption,
process slices and padding as the pixel batches of the same config (the encoded dataset keeps
the stored order of the pixel dataset, so batch s of both holds the same examples). Where the
dataset flips in training and the latents were encoded `--flips`, each training example takes
the moments of the flipped image exactly when the pixel pipeline would flip that example
(the same stateless draw from `(seed, position)`). The folder is checked when it is opened
(`latent_dataset.open_latents`: metadata, every shard's presence and size), so a missing or
truncated shard fails before training compiles.

Resumption. The training batch sequence of a process is a pure function of
`(seed, step)` (for a fixed dataset, global batch size and process layout), so nothing but the
step needs to be checkpointed: a run resumed with `start_step=k` gets exactly the batches
k, k+1, ... of an uninterrupted run. It works like this:
  * the process's examples are read in their fixed stored order (file after file, record
    after record) and shuffled once per epoch
    with a seed derived from `(seed, epoch)` (`tf.data` shuffle, `reshuffle_each_iteration`
    off); the epochs are concatenated into one infinite stream, and batch `s` is the stream's
    examples `s·b … s·b + b - 1` (batches run across epoch boundaries);
  * starting at step k opens the stream at epoch `k·b // n` and skips `k·b mod n` examples;
    the skip happens before images are decoded (they are still encoded bytes), so it costs
    reading at most one epoch of records, never decoding them;
  * random flips (ImageNet) and the random super-resolution crops use stateless ops seeded by
    `(seed, position in the stream)`.
The shuffle mixes within a buffer of `SHUFFLE_BUFFER` examples (a full permutation for any
split smaller than that, e.g. digits). Changing the global batch size or the number of
processes changes the sequence.

Evaluation (`train=False`): one pass over the process's slice in stored order, no shuffle,
no flip. The last batch is *kept partial* (smaller) by default, so every example is seen once
and none twice (what FID statistics and digit metrics need); `pad_remainder=True` instead pads
it to the full size with zero images and adds a boolean `'mask'` (False on padding) to every
batch, and also pads every process to the same number of batches (what jitted multi-process
evaluation with fixed shapes needs).
"""

from typing import Dict, Iterator, Optional

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from shortcut_jax.data import catalog
from shortcut_jax.data import errors
from shortcut_jax.data import latent_dataset
from shortcut_jax.data import preprocess as preprocess_lib
from shortcut_jax import text_encoders
from shortcut_jax.core.config_value import config_value

# Examples held in the shuffle buffer (encoded bytes: ~1 GB for 256×256 JPEGs).
SHUFFLE_BUFFER = 16_384
# Large odd multiplier that separates the per-epoch shuffle seeds of different run seeds.
_EPOCH_SEED_STRIDE = 1_000_003


def dataset_info(data_config) -> Dict:
  """What the trainer needs before compiling, read from the dataset's metadata only.

  `digits` and `image_folder` are built first if missing (digits: seconds). For datasets with
  manual data that are not prepared yet, the fixed properties are returned with
  `num_examples` empty and `prepared=False` (`make_dataset` raises the error with the prepare
  command).

  Args:
    data_config: the `config.data` section.

  With `data.latents='precomputed'` the latents folder is opened and checked instead: the
  sizes are the latents' (image_size = latent side, channels = latent channels), plus
  `pixel_image_size` (the encoded images' side); random_flip is True only when the dataset
  flips and the latents hold both flips.

  Returns:
    dict(name, image_size, channels, num_classes, num_examples={split: int}, prepared,
    random_flip, low_res_factor, latents).

  Raises:
    LatentsNotFoundError, CorruptLatentsError, IncompatibleLatentsError: precomputed latents
      missing, damaged or encoded from something else (see `latent_dataset.open_latents`).
  """
  spec = catalog.validate_data_config(data_config)
  latents = latent_dataset.latents_mode(data_config)
  info = dict(name=spec.name, image_size=data_config.image_size, channels=spec.channels,
              num_classes=spec.num_classes, num_examples={}, prepared=False,
              random_flip=spec.random_flip, low_res_factor=preprocess_lib.low_res_factor_of(data_config),
              latents=latents)
  if latents == "precomputed":
    builder, meta = latent_dataset.open_latents(data_config)
    identity = meta["identity"]
    height, _, channels = identity["latent_shape"]
    info.update(image_size=height, channels=channels, prepared=True,
                pixel_image_size=identity["source"]["image_size"],
                num_classes=meta.get("dataset_num_classes", identity["source"]["num_classes"]),
                num_examples={k: v.num_examples for k, v in builder.info.splits.items()},
                random_flip=spec.random_flip and identity["flips"])
    return info
  try:
    builder = catalog.get_builder(data_config)
  except errors.DataNotPreparedError:
    return info
  info["prepared"] = True
  info["num_examples"] = {library_split_name(spec, k): v.num_examples
                          for k, v in builder.info.splits.items()}
  info["channels"] = builder.info.features[spec.image_key].shape[-1]
  features = builder.info.features
  info["num_classes"] = features["label"].num_classes if "label" in features.keys() else 1
  check_embedding(builder, data_config)
  return info


def library_split_name(spec, stored: str) -> str:
  """The library's name of a stored split: the dataset's held-out split is 'test'."""
  return "test" if stored == spec.held_out_split else stored


def stored_split(spec, split: str) -> str:
  """The stored split a library split expression reads ('test[:10]' -> 'validation[:10]')."""
  base, _, rest = split.partition("[")
  if base == "test" and spec.held_out_split != "test":
    return spec.held_out_split + ("[" + rest if rest else "")
  return split


def check_embedding(builder, data_config) -> None:
  """Raises ValueError unless the dataset's `embedding` feature matches `data.embedding_dim`."""
  want = int(config_value(data_config, "embedding_dim", section="data") or 0)
  if text_encoders.uses_digit_words(data_config):
    return  # The vectors come from text_encoders, not the dataset (config.validate checks them).
  features = builder.info.features
  have = int(features["embedding"].shape[-1]) if "embedding" in features.keys() else 0
  if want and not have:
    raise ValueError(f"data.embedding_dim={want}, but dataset {builder.name!r} has no "
                     "'embedding' feature (for image_folder set data.embeddings to the .npz of "
                     "`python -m shortcut_jax.tools.embed_text`)")
  if want and have != want:
    raise ValueError(f"data.embedding_dim={want}, but the dataset's embeddings have size {have}")


def _process_layout(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def require_data(data_config, split: str = "train") -> None:
  """Raises now (before anything is compiled) if `split` of the configured data cannot be read:
  `DataNotPreparedError` with the prepare command for a manual dataset, the latents errors of
  `latent_dataset.open_latents` for precomputed latents. Embedded datasets are built."""
  if config_value(data_config, "latents", section="data") == "precomputed":
    latent_dataset.open_latents(data_config, split)
  else:
    catalog.get_builder(data_config)


def make_dataset(data_config, *, split: str, global_batch_size: int, seed: int,
                 train: bool = True, start_step: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None,
                 pad_remainder: bool = False) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of `split` for this process (see the module docstring for order and resumption).

  Args:
    data_config: the `config.data` section (name, image_size, num_classes, data_dir, folder,
      low_res_factor).
    split: 'train' or 'test' (any TFDS split expression, e.g. 'train[:50%]', also works).
    global_batch_size: batch size summed over processes; must divide by `process_count`.
    seed: seed of the shuffle, flips and super-resolution crops (training only).
    train: True: shuffled, flipped where the dataset says so, infinite. False: one pass in
      stored order.
    start_step: first training step to produce (resumption); ignored when `train=False`.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    pad_remainder: evaluation only: pad the last batch (see module docstring) and add 'mask'.

  Returns:
    An iterator of numpy dicts {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}
    (plus 'cond_image' float32 [b, H, W, C] in [-1, 1] when `data.low_res_factor` > 0, and
    'mask' bool [b] with `pad_remainder`), b = global_batch_size // process_count. With
    `data.latents='precomputed'`: 'latent_mean' and 'latent_std' float32 [b, h, w, c] instead
    of 'image' (module docstring).

  Raises:
    ValueError: bad config values or batch size.
    DataNotPreparedError: manual data not prepared (the message has the prepare command).
    LatentsNotFoundError, CorruptLatentsError, IncompatibleLatentsError: precomputed latents
      missing (the message has the encode command), damaged (it names the file) or encoded
      from something else; raised here, before any batch is read.
  """
  spec = catalog.validate_data_config(data_config)
  process_index, process_count = _process_layout(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  batch = global_batch_size // process_count
  precomputed = latent_dataset.latents_mode(data_config) == "precomputed"
  if precomputed:
    builder, meta = latent_dataset.open_latents(data_config, split)
  else:
    builder = catalog.get_builder(data_config)
    check_embedding(builder, data_config)
  known = [library_split_name(spec, k) for k in builder.info.splits.keys()]
  if split.split("[")[0] not in known:
    raise ValueError(f"split {split!r} not in dataset {spec.name!r} (splits: {known})")
  split = stored_split(spec, split)
  sub_split = tfds.split_for_jax_process(split, process_index=process_index,
                                         process_count=process_count)
  num_examples = builder.info.splits[sub_split].num_examples
  if num_examples == 0:
    raise ValueError(f"process {process_index} of {process_count} gets no example of "
                     f"{spec.name!r} split {split!r}")
  read_config = stored_order_read_config(builder, split, data_config)
  if precomputed:
    records = builder.as_dataset(split=sub_split, shuffle_files=False, read_config=read_config)
    preprocess = preprocess_lib.latent_example_fn(meta, data_config, spec, seed=seed, train=train)
  else:
    # Images stay encoded until after shuffle and skip: both then move bytes, not pixels (and
    # images the library does not read, e.g. DIV2K's 'lr', are never decoded).
    records = builder.as_dataset(
        split=sub_split, shuffle_files=False, read_config=read_config,
        decoders={key: tfds.decode.SkipDecoding() for key, feature in
                  builder.info.features.items() if isinstance(feature, tfds.features.Image)},
    )
    preprocess = preprocess_lib.example_fn(builder, data_config, spec, seed=seed, train=train)

  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True

  if train:
    start = start_step * batch
    first_epoch, offset = divmod(start, num_examples)
    buffer = min(num_examples, SHUFFLE_BUFFER)

    def epoch(e):
      return records.shuffle(buffer, seed=seed * _EPOCH_SEED_STRIDE + e,
                             reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.skip(offset).enumerate(start=start)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True)
    logging.info("%s/%s: process %d/%d, %d examples, batch %d, starting at step %d (epoch %d + %d)",
                 spec.name, split, process_index, process_count, num_examples, batch, start_step,
                 first_epoch, offset)
  else:
    ds = records.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    if pad_remainder:
      ds = _pad(ds, builder, split, batch, process_count, num_examples)
    ds = ds.batch(batch, drop_remainder=False)
  ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds))


def stored_order_read_config(builder, split: str, data_config) -> tfds.ReadConfig:
  """How a split's files are read: in the stored order, `data.parallel_reads` files at once.

  The order must be the stored one: example i of a split is the same in a pixel dataset and its
  encoded latents, whatever their sharding, and a resumed run skips to the same example.
  (TFDS's default interleaves 16 files in blocks of 16 records.) With n parallel reads, n files
  are open and read ahead concurrently (what hides the latency of a bucket), but each block is
  a whole file (`interleave_block_length` = the longest file), so the interleave emits file 1,
  then file 2, ...: the stored order, read faster.
  """
  reads = int(config_value(data_config, "parallel_reads", section="data"))
  lengths = list(builder.info.splits[split.split("[")[0]].shard_lengths or [])
  if reads <= 1 or len(lengths) <= 1:
    return tfds.ReadConfig(interleave_cycle_length=1)
  return tfds.ReadConfig(interleave_cycle_length=reads, interleave_block_length=max(lengths),
                         num_parallel_calls_for_interleave_files=reads)


def _pad(ds, builder, split, batch, process_count, num_examples):
  """Adds 'mask' and zero examples so every process yields the same number of full batches."""
  total = builder.info.splits[split].num_examples
  largest_slice = -(-total // process_count)  # even_splits gives slices of floor or ceil size.
  num_batches = -(-largest_slice // batch)
  pad = num_batches * batch - num_examples
  ds = ds.map(lambda ex: dict(ex, mask=tf.constant(True)))
  if pad:
    zero = {k: tf.zeros(v.shape, v.dtype) for k, v in ds.element_spec.items() if k != "mask"}
    zero["mask"] = tf.constant(False)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(zero).repeat(pad))
  return ds
