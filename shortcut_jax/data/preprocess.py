"""Per-example preprocessing of the input pipeline (`pipeline.make_dataset`): one (position in
the stream, stored example) pair in, one example of the batch out — decoding, the random flip,
the super-resolution crop and its LR condition, quarter turns, labels and text embeddings
(`example_fn`), or the moments of a precomputed latent (`latent_example_fn`). Every random
choice is a stateless draw seeded by `(seed, position)`, so a resumed run repeats it."""

from typing import Optional

import tensorflow as tf

from shortcut_jax import text_encoders
from shortcut_jax.core.config_value import config_value
from shortcut_jax.data import latent_dataset
from shortcut_jax.data import low_res

# Folded into the per-example seed for the crop offsets, so they are independent of the flip.
_CROP_SEED_SALT = 1
_WORD_NOISE_SALT = 2
_ROT90_SEED_SALT = 3
# A 1x2 image whose flip shows the pixel pipeline's flip decision (precomputed latents).
_FLIP_MARKER = ((0.0,), (1.0,))


def low_res_factor_of(data_config) -> int:
  """`data.low_res_factor`, 0 when the config has no such field (no super-resolution)."""
  return int(config_value(data_config, "low_res_factor", section="data") or 0)


def _crop(image, example_seed, *, stored: Optional[int], size: int, train: bool):
  """`size`×`size` crop of a stored image: random in training, central in evaluation. `stored`
  is the side of a square dataset's images, None for images of any size (at least `size`)."""
  seed = tf.random.experimental.stateless_fold_in(example_seed, _CROP_SEED_SALT)
  if stored is None:
    room = tf.shape(image, out_type=tf.int64)[:2] - size
    with tf.control_dependencies([tf.debugging.assert_non_negative(
        room, message=f"an image is smaller than the {size}x{size} crop")]):
      room = tf.identity(room)
    if train:
      unit = tf.random.stateless_uniform([2], seed=seed, dtype=tf.float64)
      offset = tf.minimum(tf.cast(unit * tf.cast(room + 1, tf.float64), tf.int64), room)
    else:
      offset = room // 2
  elif train:
    offset = tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=stored - size + 1,
                                         dtype=tf.int64)
  else:
    offset = tf.fill([2], tf.constant((stored - size) // 2, tf.int64))
  crop = tf.slice(image, tf.concat([offset, tf.zeros([1], tf.int64)], 0),
                  tf.constant([size, size, -1], tf.int64))
  return tf.ensure_shape(crop, (size, size, image.shape[-1]))


def example_fn(builder, data_config, spec, *, seed: int, train: bool):
  """Decodes one (position, example) pair into float32 image in [-1, 1] and int32 label.

  With `data.low_res_factor` > 0 the image is cropped instead of resized and 'cond_image' is
  added (module docstring).
  """
  image_feature = builder.info.features[spec.image_key]
  stored = image_feature.shape[0]
  size = data_config.image_size
  factor = low_res_factor_of(data_config)
  unconditional = data_config.num_classes == 1
  flip = train and spec.random_flip
  rotate = train and bool(config_value(data_config, "random_rot90", section="data"))
  embedding = bool(config_value(data_config, "embedding_dim", section="data"))
  words = None
  if embedding and text_encoders.uses_digit_words(data_config):
    words = tf.constant(text_encoders.digit_word_vectors(int(data_config.embedding_dim)))
    word_noise = float(config_value(data_config, "embedding_noise", section="data") or 0.0)

  def fn(position, example):
    image = image_feature.decode_example(example[spec.image_key])
    example_seed = tf.stack([tf.constant(seed, tf.int64), position])
    if flip:
      image = tf.image.stateless_random_flip_left_right(image, seed=example_seed)
    if factor:
      image = _crop(image, example_seed, stored=stored, size=size, train=train)
    if rotate:
      turns = tf.random.stateless_uniform(
          [], seed=tf.random.experimental.stateless_fold_in(example_seed, _ROT90_SEED_SALT),
          minval=0, maxval=4, dtype=tf.int32)
      image = tf.ensure_shape(tf.image.rot90(image, k=turns), image.shape)  # Square.
    image = tf.cast(image, tf.float32)
    if size != stored and not factor:
      image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    image = image / 127.5 - 1.0
    label = tf.cast(example["label"], tf.int32) if "label" in example else tf.constant(0)
    if unconditional:
      # num_classes=1: label 0 is the only class and 1 the null label of the model.
      label = tf.zeros_like(label)
    out = {"image": image, "label": label}
    if factor:
      out["cond_image"] = low_res.cond_image_tf(image, factor)
    if words is not None:
      # The class word's vector plus noise, fixed per example (position) and seed.
      noise = tf.random.stateless_normal(
          [words.shape[1]], seed=tf.random.experimental.stateless_fold_in(example_seed,
                                                                          _WORD_NOISE_SALT))
      out["embedding"] = tf.gather(words, tf.cast(example["label"], tf.int32)) + word_noise * noise
    elif embedding:
      out["embedding"] = tf.cast(example["embedding"], tf.float32)
    return out

  return fn


def _flip_decision(example_seed):
  """Whether `example_fn` flips the example with this seed (the same stateless draw)."""
  marker = tf.image.stateless_random_flip_left_right(tf.constant([_FLIP_MARKER]),
                                                     seed=example_seed)
  return marker[0, 0, 0] > 0.5


def latent_example_fn(meta, data_config, spec, *, seed: int, train: bool):
  """One (position, encoded example) pair -> float32 'latent_mean', 'latent_std' (and
  'cond_latent' for a latent pair dataset), int32 label.

  In training, where the dataset flips and both flips are stored, the flipped image's moments
  are taken exactly when the pixel pipeline would flip the example.
  """
  flips = meta["identity"]["flips"]
  flip = train and spec.random_flip and flips
  unconditional = data_config.num_classes == 1
  names = latent_dataset.latent_names(meta["identity"])

  def fn(position, example):
    out = {k: tf.cast(example[k], tf.float32) for k in names}
    if flip:
      example_seed = tf.stack([tf.constant(seed, tf.int64), position])
      flipped = _flip_decision(example_seed)
      out = {k: tf.where(flipped, tf.cast(example[k + latent_dataset.FLIPPED_SUFFIX],
                                          tf.float32), out[k]) for k in names}
    label = tf.cast(example["label"], tf.int32)
    out["label"] = tf.zeros_like(label) if unconditional else label
    for key in meta["identity"]["extra_features"]:
      if key not in out:
        out[key] = example[key]
    return out

  return fn
