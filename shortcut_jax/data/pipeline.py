"""Input pipeline: `make_dataset` (training and evaluation batches) and `dataset_info`.

Batches are numpy dicts `{'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}`, with
`b = global_batch_size // process_count`: each process reads its own, disjoint slice of the
split (`tfds.split_for_jax_process`) and the trainer assembles the global batch.

Resumption. The training batch sequence of a process is a pure function of
`(seed, step)` (for a fixed dataset, global batch size and process layout), so nothing but the
step needs to be checkpointed: a run resumed with `start_step=k` gets exactly the batches
k, k+1, ... of an uninterrupted run. It works like this:
  * the process's examples are read in their fixed stored order and shuffled once per epoch
    with a seed derived from `(seed, epoch)` (`tf.data` shuffle, `reshuffle_each_iteration`
    off); the epochs are concatenated into one infinite stream, and batch `s` is the stream's
    examples `s·b … s·b + b - 1` (batches run across epoch boundaries);
  * starting at step k opens the stream at epoch `k·b // n` and skips `k·b mod n` examples;
    the skip happens before images are decoded (they are still encoded bytes), so it costs
    reading at most one epoch of records, never decoding them;
  * random flips (ImageNet) use stateless ops seeded by `(seed, position in the stream)`.
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

  Returns:
    dict(name, image_size, channels, num_classes, num_examples={split: int}, prepared,
    random_flip).
  """
  spec = catalog.validate_data_config(data_config)
  info = dict(name=spec.name, image_size=data_config.image_size, channels=spec.channels,
              num_classes=spec.num_classes, num_examples={}, prepared=False,
              random_flip=spec.random_flip)
  try:
    builder = catalog.get_builder(data_config)
  except errors.DataNotPreparedError:
    return info
  info["prepared"] = True
  info["num_examples"] = {k: v.num_examples for k, v in builder.info.splits.items()}
  info["channels"] = builder.info.features["image"].shape[-1]
  info["num_classes"] = builder.info.features["label"].num_classes
  return info


def _process_layout(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _preprocess_fn(builder, data_config, spec, *, seed: int, train: bool):
  """Decodes one (position, example) pair into float32 image in [-1, 1] and int32 label."""
  image_feature = builder.info.features["image"]
  stored = image_feature.shape[0]
  size = data_config.image_size
  unconditional = data_config.num_classes == 1
  flip = train and spec.random_flip

  def fn(position, example):
    image = image_feature.decode_example(example["image"])
    if flip:
      image = tf.image.stateless_random_flip_left_right(
          image, seed=tf.stack([tf.constant(seed, tf.int64), position]))
    image = tf.cast(image, tf.float32)
    if size != stored:
      image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    image = image / 127.5 - 1.0
    label = tf.cast(example["label"], tf.int32)
    if unconditional:
      # num_classes=1: label 0 is the only class and 1 the null label of the model.
      label = tf.zeros_like(label)
    return {"image": image, "label": label}

  return fn


def make_dataset(data_config, *, split: str, global_batch_size: int, seed: int,
                 train: bool = True, start_step: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None,
                 pad_remainder: bool = False) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of `split` for this process (see the module docstring for order and resumption).

  Args:
    data_config: the `config.data` section (name, image_size, num_classes, data_dir, folder).
    split: 'train' or 'test' (any TFDS split expression, e.g. 'train[:50%]', also works).
    global_batch_size: batch size summed over processes; must divide by `process_count`.
    seed: seed of the shuffle and flips (training only).
    train: True: shuffled, flipped where the dataset says so, infinite. False: one pass in
      stored order.
    start_step: first training step to produce (resumption); ignored when `train=False`.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    pad_remainder: evaluation only: pad the last batch (see module docstring) and add 'mask'.

  Returns:
    An iterator of numpy dicts {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}
    (plus 'mask' bool [b] with `pad_remainder`), b = global_batch_size // process_count.

  Raises:
    ValueError: bad config values or batch size.
    DataNotPreparedError: manual data not prepared (the message has the prepare command).
  """
  spec = catalog.validate_data_config(data_config)
  process_index, process_count = _process_layout(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  batch = global_batch_size // process_count
  builder = catalog.get_builder(data_config)
  known = list(builder.info.splits.keys())
  if split.split("[")[0] not in known:
    raise ValueError(f"split {split!r} not in dataset {spec.name!r} (splits: {known})")
  sub_split = tfds.split_for_jax_process(split, process_index=process_index,
                                         process_count=process_count)
  num_examples = builder.info.splits[sub_split].num_examples
  if num_examples == 0:
    raise ValueError(f"process {process_index} of {process_count} gets no example of "
                     f"{spec.name!r} split {split!r}")
  # Images stay encoded until after shuffle and skip: both then move bytes, not pixels.
  records = builder.as_dataset(
      split=sub_split, shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
  )
  preprocess = _preprocess_fn(builder, data_config, spec, seed=seed, train=train)

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
