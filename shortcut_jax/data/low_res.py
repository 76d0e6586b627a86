"""The low-resolution (LR) input of super-resolution: downsample the HR image, upsample it back.

Super-resolution models (`data.low_res_factor` f > 0) are conditioned on `cond_image`: the HR
image (values in [-1, 1]) downsampled by f and upsampled back to the HR size. Both resizes are
bicubic (Keys kernel, a = -0.5) with antialiasing: when shrinking, the kernel is widened by f so
it low-passes the image before sampling, which is the degradation of MATLAB's `imresize` and
PIL's BICUBIC, the standard bicubic SR benchmark setting. When enlarging, antialiasing changes
nothing. Both results are clipped to [-1, 1] (bicubic overshoots at edges; a real LR image is
a valid image).

The maths exists twice, and the tests check that both agree to float rounding:
  * `make_low_res_tf` / `upsample_tf` / `cond_image_tf`: TensorFlow ops for the tf.data
    pipeline (`tf.image.resize(..., 'bicubic', antialias=True)`);
  * `make_low_res` / `upsample` / `cond_image`: the same resize with `jax.image.resize`
    (whose `scale_and_translate` follows TF's kernel and edge handling), for evaluation on
    any user image, in numpy or inside jitted code.
Images are [H, W, C] or batches [b, H, W, C]; H and W must divide by the factor (`mod_crop`
trims an arbitrary image to that).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

# The resize used for both directions (see the module docstring).
METHOD = "bicubic"


def _spatial_shape(shape: Tuple[int, ...]) -> Tuple[int, int]:
  if len(shape) not in (3, 4):
    raise ValueError(f"expected an image [H, W, C] or a batch [b, H, W, C], got shape {shape}")
  return shape[-3], shape[-2]


def _check_factor(height: int, width: int, factor: int):
  if not isinstance(factor, (int, np.integer)) or factor < 1:
    raise ValueError(f"low-resolution factor must be a positive integer, got {factor!r}")
  if height % factor or width % factor:
    raise ValueError(f"image size {height}x{width} is not divisible by the factor {factor}; "
                     "trim it first with `mod_crop`")


def mod_crop(image, factor: int):
  """Trims the bottom and right edges so that height and width divide by `factor`.

  Args:
    image: array [H, W, C] or [b, H, W, C].
    factor: the super-resolution factor.

  Returns:
    The top-left [H - H mod f, W - W mod f] part of `image` (a view for numpy input).
  """
  height, width = _spatial_shape(tuple(image.shape))
  return image[..., :height - height % factor, :width - width % factor, :]


# --- TensorFlow (input pipeline) -----------------------------------------------------------


def make_low_res_tf(hr: tf.Tensor, factor: int) -> tf.Tensor:
  """LR image: antialiased bicubic downsampling of `hr` by `factor`, clipped to [-1, 1].

  Args:
    hr: float tensor [H, W, C] or [b, H, W, C] in [-1, 1]; H, W divisible by `factor`.
    factor: downsampling factor (2, 4, 8, ...).

  Returns:
    float32 tensor of size H/f × W/f.
  """
  height, width = _spatial_shape(tuple(hr.shape))
  _check_factor(height, width, factor)
  lr = tf.image.resize(tf.cast(hr, tf.float32), (height // factor, width // factor),
                       method=METHOD, antialias=True)
  return tf.clip_by_value(lr, -1.0, 1.0)


def upsample_tf(lr: tf.Tensor, factor: int) -> tf.Tensor:
  """Bicubic upsampling of `lr` by `factor`, clipped to [-1, 1].

  Args:
    lr: float tensor [h, w, C] or [b, h, w, C].
    factor: upsampling factor.

  Returns:
    float32 tensor of size h·f × w·f.
  """
  height, width = _spatial_shape(tuple(lr.shape))
  up = tf.image.resize(tf.cast(lr, tf.float32), (height * factor, width * factor),
                       method=METHOD, antialias=True)
  return tf.clip_by_value(up, -1.0, 1.0)


def cond_image_tf(hr: tf.Tensor, factor: int) -> tf.Tensor:
  """The conditioning input of SR training: `upsample_tf(make_low_res_tf(hr, f), f)`."""
  return upsample_tf(make_low_res_tf(hr, factor), factor)


# --- numpy / jax (evaluation on any image) ---------------------------------------------------


def _resize(x, height: int, width: int):
  shape = x.shape[:-3] + (height, width, x.shape[-1])
  return jax.image.resize(x, shape, method=METHOD, antialias=True,
                          precision=jax.lax.Precision.HIGHEST)


def make_low_res(hr, factor: int):
  """LR image, as `make_low_res_tf` (same kernel, same edges), for numpy or jax arrays.

  Args:
    hr: array [H, W, C] or [b, H, W, C] in [-1, 1]; H, W divisible by `factor` (`mod_crop`).
    factor: downsampling factor.

  Returns:
    float32 array of size H/f × W/f: numpy for numpy input, a jax array for a jax input
    (so it also works under `jax.jit`).
  """
  height, width = _spatial_shape(tuple(hr.shape))
  _check_factor(height, width, factor)
  out = jnp.clip(_resize(jnp.asarray(hr, jnp.float32), height // factor, width // factor),
                 -1.0, 1.0)
  return np.asarray(out) if isinstance(hr, np.ndarray) else out


def upsample(lr, factor: int):
  """Bicubic upsampling by `factor` clipped to [-1, 1], as `upsample_tf`.

  Args:
    lr: array [h, w, C] or [b, h, w, C].
    factor: upsampling factor.

  Returns:
    float32 array of size h·f × w·f (numpy for numpy input, else a jax array).
  """
  height, width = _spatial_shape(tuple(lr.shape))
  out = jnp.clip(_resize(jnp.asarray(lr, jnp.float32), height * factor, width * factor),
                 -1.0, 1.0)
  return np.asarray(out) if isinstance(lr, np.ndarray) else out


def cond_image(hr, factor: int):
  """`upsample(make_low_res(hr, f), f)`: what the pipeline puts in `cond_image` for `hr`."""
  return upsample(make_low_res(hr, factor), factor)
