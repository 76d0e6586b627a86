"""InceptionV3, FID variant: the 2015 TensorFlow graph as pytorch-fid builds it.

FID compares 2048-d pool features of this exact network; any other InceptionV3
(torchvision's, Keras') gives numbers that cannot be compared with published
ones. The blocks follow pytorch-fid's `FIDInceptionA/C/E_1/E_2` patches of
torchvision's Inception3:

  * every convolution is `BasicConv2d`: conv without bias, BatchNorm
    (eps=1e-3, running statistics), ReLU;
  * the average pools inside Mixed_5b-d, Mixed_6b-e and Mixed_7b do not count
    the zero padding (TensorFlow's behaviour, `count_include_pad=False`);
  * the pool branch of Mixed_7c is a 3x3 max pool (a quirk of the 2015 graph);
  * features are the global average of Mixed_7c's output.

Optional outputs (`InceptionV3.__call__(images, outputs=(...))`, for ADM's evaluation
suite, `shortcut_jax.evaluators.adm_metrics`):

  * 'pool': the 2048-d FID features (TF `pool_3`), what a plain call returns;
  * 'spatial': ADM's sFID features, TF `mixed_6/conv:0` (the 1x1-convolution branch of the
    graph's `mixed_6` block after BatchNorm and ReLU) cut to its first 7 channels and
    flattened in (row, column, channel) order: 17 x 17 x 7 = 2023 values at 299x299. The
    2015 graph names its 11 mixed blocks `mixed`, `mixed_1`, ..., `mixed_10`, so `mixed_6` is
    torchvision's `Mixed_6d` (not `Mixed_6e`, which is `mixed_7`), and its `conv` is
    `Mixed_6d.branch1x1`, the first 192 channels of Mixed_6d's output (the graph's
    `mixed_6/join` concatenates its branches in the same order). The tensor is the same one;
    only the numerics around it differ from the TF graph (see below);
  * 'logits_unbiased': `pool @ W` with the 1008-way classifier's weights W and no bias, the
    logits ADM (and improved-gan's Inception Score code it copies) feeds to the softmax: both
    take `softmax/logits/MatMul`'s weight input and leave the bias out;
  * 'logits': `pool @ W + b`, the graph's own `softmax/logits` (not used by ADM).

The logits need the classifier (`params/fc/kernel` [2048, 1008], `params/fc/bias` [1008]),
which pytorch-fid's weights carry as `fc.weight` / `fc.bias` and `convert_inception` keeps;
files converted before it kept them load as before, without logits.

Differences from ADM's TF graph, all in the input pipeline: ADM feeds uint8 values and the
graph resizes them to 299 with TF1's `ResizeBilinear` (no half-pixel centres) and maps them
with (x - 128) / 128; here the resize has half-pixel centres (pytorch-fid's) and uint8 images
map to [-1, 1] as x / 127.5 - 1. The weights are the graph's own (pytorch-fid converted them).

Module and parameter names are pytorch-fid's (`Conv2d_1a_3x3`,
`Mixed_5b/branch1x1/conv/kernel`, ...), so the weights map one to one; see
`shortcut_jax.tools.convert_inception`.

Input is images in [-1, 1], NHWC, of any size. They are resized to 299x299 with
bilinear interpolation without antialiasing (the original shortcut-models
protocol; it matches pytorch-fid's
`F.interpolate(mode='bilinear', align_corners=False)` to float32 rounding),
then clipped to [-1, 1]. pytorch-fid maps [0, 1] inputs to
[-1, 1] itself; here the input is already in [-1, 1].

Weights. `load_inception` reads either

  (a) the library's own file, an `.npz` written by
      `python -m shortcut_jax.tools.convert_inception` from pytorch-fid's
      `pt_inception-2015-12-05-6726825d.pth`; or
  (b) `inception_v3_weights_fid.pickle`, the Flax port of the same weights the
      original shortcut-models code downloads. Its layout is a nested dict
      `{block: {branch: {'conv': {'kernel' (HWIO)}, 'bn': {'scale', 'bias',
      'mean', 'var'}}}}` (stem convolutions sit directly under the block name,
      `fc` the classifier, kept for the logits when it is a [2048, 1008] `kernel` and a
      [1008] `bias`), as the original's `utils/fid.py`
      reads it (the file itself was not available to check). It is read with
      a restricted unpickler that only rebuilds numpy arrays and plain
      containers, since a pickle can otherwise run arbitrary code.

The path comes from the `path` argument, else from the environment variable
`SHORTCUT_JAX_INCEPTION`; it may be remote (gs://...): files are read and
written through `shortcut_jax.storage`.
"""

import functools
import io
import os
import pickle
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax import storage

Array = Any
Variables = Mapping[str, Any]

ENV_VAR = 'SHORTCUT_JAX_INCEPTION'
FEATURE_DIM = 2048
IMAGE_SIZE = 299
FILE_FORMAT = 'shortcut_jax/inception_fid'
# Version 2 files carry the classifier (`params/fc`); files without it are still written as
# version 1, so older readers keep reading them.
FILE_FORMAT_VERSION = 2
NUM_CLASSES = 1008  # The 2015 graph's classifier: 1000 ImageNet classes + 8 unused.
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 channels of mixed_6/conv.
# What `InceptionV3.__call__(images, outputs=...)` can return.
OUTPUTS = ('pool', 'spatial', 'logits_unbiased', 'logits')
LOGIT_OUTPUTS = ('logits_unbiased', 'logits')
PYTORCH_FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
    'pt_inception-2015-12-05-6726825d.pth')

# Mixed blocks in forward order; their outputs can be captured with
# `capture_intermediates`.
MIXED_NAMES = ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b',
               'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b',
               'Mixed_7c')

NO_CLASSIFIER_HELP = (
    'these Inception weights have no classifier layer (params/fc), so the logits (Inception '
    'Score) are unavailable: the file was converted before convert_inception kept pytorch-fid\'s '
    'fc.weight / fc.bias. Convert pt_inception-2015-12-05-6726825d.pth again with `python -m '
    'shortcut_jax.tools.convert_inception` to get them; FID, sFID and precision / recall work '
    'without it.')

_MISSING_WEIGHTS_HELP = (
    'The FID InceptionV3 weights are not bundled. Download pytorch-fid\'s '
    f'weights from its GitHub releases ({PYTORCH_FID_WEIGHTS_URL}), convert '
    'them with `python -m shortcut_jax.tools.convert_inception --pth '
    'pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz` (needs '
    'torch), and pass the .npz path to load_inception(path=...) or set the '
    f'environment variable {ENV_VAR} to it. The original shortcut-models '
    'pickle (inception_v3_weights_fid.pickle) is accepted as well.')


def bilinear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of align_corners=False bilinear resampling.

  Source coordinates are `(i + 0.5) * n_in / n_out - 0.5`, clamped at 0
  below and at the last pixel above. They are computed in float32 in the same
  order as PyTorch's CPU and CUDA kernels, whose rounding moves a weight by up
  to ~1e-4 on large inputs; this keeps the resize within float32 rounding of
  pytorch-fid's.

  Args:
    n_in: input length.
    n_out: output length.

  Returns:
    float32 matrix whose rows sum to one.
  """
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  src = scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
  src = np.maximum(src, f32(0.0))
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = np.clip(src - lo.astype(f32), 0.0, 1.0).astype(np.float64)
  matrix = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  np.add.at(matrix, (rows, lo), 1.0 - frac)
  np.add.at(matrix, (rows, hi), frac)
  return matrix.astype(np.float32)


def resize_images(images: Array, size: Tuple[int, int],
                  antialias: bool = False) -> Array:
  """Bilinear resize of NHWC images with half-pixel centres.

  Without antialiasing this is PyTorch's
  `F.interpolate(mode='bilinear', align_corners=False)` (what pytorch-fid
  uses, and up to float32 rounding `jax.image.resize(..., antialias=False)`,
  what the original uses): each output pixel mixes the two nearest input
  pixels per axis. It is applied as two small matrix products with weights
  computed in float64, which is exact to float32 rounding and fast on
  accelerators. With antialiasing, `jax.image.resize` widens the kernel
  when downsampling.

  Args:
    images: float array [B, H, W, C].
    size: target (height, width).
    antialias: widen the kernel when downsampling (PIL-like); off in the
      original protocol.

  Returns:
    float32 array [B, size[0], size[1], C].
  """
  images = jnp.asarray(images, jnp.float32)
  height, width = images.shape[1:3]
  if (height, width) == tuple(size):
    return images
  if antialias:
    shape = (images.shape[0], size[0], size[1], images.shape[3])
    return jax.image.resize(images, shape, method='bilinear', antialias=True)
  rows = jnp.asarray(bilinear_resize_matrix(height, size[0]))
  cols = jnp.asarray(bilinear_resize_matrix(width, size[1]))
  highest = jax.lax.Precision.HIGHEST
  x = jnp.einsum('ph,bhwc->bpwc', rows, images, precision=highest)
  return jnp.einsum('qw,bpwc->bpqc', cols, x, precision=highest)


def _same_padding(kernel_size: Tuple[int, int]):
  return tuple((k // 2, k // 2) for k in kernel_size)


class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (eps=1e-3, running stats), ReLU."""
  features: int
  kernel_size: Tuple[int, int] = (1, 1)
  strides: Tuple[int, int] = (1, 1)
  padding: Any = 'VALID'
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=self.padding, use_bias=False,
                precision=self.precision, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


# The 3x3 pools are written as maxima / sums of shifted slices, separably (rows, then columns),
# instead of `reduce_window` (`nn.max_pool` / `nn.avg_pool`): on XLA's CPU backend the slice
# form ran the network's pools 1.6-1.7x faster in isolation (docs/benchmarks.md, "Inception
# on CPU"; the end-to-end gain is not yet resolved on the shared machine). Max pools are
# bit-identical; the average pool's sum is reassociated (float32 rounding, ~1e-7 relative).


def _shifted(x: Array, axis: int, stride: int, size: int):
  """The 3 slices x[k::stride] (k = 0, 1, 2) along `axis`, each `size` long."""
  return [jax.lax.slice_in_dim(x, k, k + stride * (size - 1) + 1, stride, axis)
          for k in range(3)]


def _pool3(x: Array, op, stride: int) -> Array:
  """A VALID 3x3 pool with `op` (jnp.maximum or jnp.add), separably."""
  ho = (x.shape[1] - 3) // stride + 1
  wo = (x.shape[2] - 3) // stride + 1
  a, b, c = _shifted(x, 1, stride, ho)
  x = op(op(a, b), c)
  a, b, c = _shifted(x, 2, stride, wo)
  return op(op(a, b), c)


def _avg_pool_3x3(x: Array) -> Array:
  # TensorFlow's average pool ignores the zero padding (pytorch-fid's patch): divide by
  # the number of real pixels in each window.
  h, w = x.shape[1], x.shape[2]
  total = _pool3(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), jnp.add, 1)
  count = lambda n: np.asarray([min(i + 1, n - 1) - max(i - 1, 0) + 1 for i in range(n)],
                               np.float32)
  rows, cols = count(h), count(w)
  return total / jnp.asarray(np.outer(rows, cols)[None, :, :, None], x.dtype)


def _max_pool_3x3(x: Array) -> Array:
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return _pool3(x, jnp.maximum, 1)


def _max_pool_3x3_stride2(x: Array) -> Array:
  return _pool3(x, jnp.maximum, 2)


class InceptionA(nn.Module):
  """35x35 block (pytorch-fid's FIDInceptionA): 64 + 64 + 96 + pool_features."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    branch1x1 = conv(64, name='branch1x1')(x)
    branch5x5 = conv(48, name='branch5x5_1')(x)
    branch5x5 = conv(64, (5, 5), padding=_same_padding((5, 5)),
                     name='branch5x5_2')(branch5x5)
    branch3x3dbl = conv(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=_same_padding((3, 3)),
                        name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), padding=_same_padding((3, 3)),
                        name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = conv(self.pool_features, name='branch_pool')(
        _avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool],
                           axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a): 384 + 96 + input channels."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    branch3x3 = conv(384, (3, 3), strides=(2, 2), name='branch3x3')(x)
    branch3x3dbl = conv(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=_same_padding((3, 3)),
                        name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), strides=(2, 2),
                        name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = _max_pool_3x3_stride2(x)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions (FIDInceptionC): 4 x 192."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    row, col = (1, 7), (7, 1)
    branch1x1 = conv(192, name='branch1x1')(x)
    branch7x7 = conv(c7, name='branch7x7_1')(x)
    branch7x7 = conv(c7, row, padding=_same_padding(row),
                     name='branch7x7_2')(branch7x7)
    branch7x7 = conv(192, col, padding=_same_padding(col),
                     name='branch7x7_3')(branch7x7)
    branch7x7dbl = conv(c7, name='branch7x7dbl_1')(x)
    branch7x7dbl = conv(c7, col, padding=_same_padding(col),
                        name='branch7x7dbl_2')(branch7x7dbl)
    branch7x7dbl = conv(c7, row, padding=_same_padding(row),
                        name='branch7x7dbl_3')(branch7x7dbl)
    branch7x7dbl = conv(c7, col, padding=_same_padding(col),
                        name='branch7x7dbl_4')(branch7x7dbl)
    branch7x7dbl = conv(192, row, padding=_same_padding(row),
                        name='branch7x7dbl_5')(branch7x7dbl)
    branch_pool = conv(192, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool],
                           axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a): 320 + 192 + input channels."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    row, col = (1, 7), (7, 1)
    branch3x3 = conv(192, name='branch3x3_1')(x)
    branch3x3 = conv(320, (3, 3), strides=(2, 2),
                     name='branch3x3_2')(branch3x3)
    branch7x7x3 = conv(192, name='branch7x7x3_1')(x)
    branch7x7x3 = conv(192, row, padding=_same_padding(row),
                       name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = conv(192, col, padding=_same_padding(col),
                       name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = conv(192, (3, 3), strides=(2, 2),
                       name='branch7x7x3_4')(branch7x7x3)
    branch_pool = _max_pool_3x3_stride2(x)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded filter banks: 320 + 768 + 768 + 192 = 2048.

  Attributes:
    pool: 'avg' (FIDInceptionE_1, Mixed_7b; padding not counted) or 'max'
      (FIDInceptionE_2, Mixed_7c).
  """
  pool: str = 'avg'
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    row, col = (1, 3), (3, 1)
    branch1x1 = conv(320, name='branch1x1')(x)
    branch3x3 = conv(384, name='branch3x3_1')(x)
    branch3x3_a = conv(384, row, padding=_same_padding(row),
                       name='branch3x3_2a')(branch3x3)
    branch3x3_b = conv(384, col, padding=_same_padding(col),
                       name='branch3x3_2b')(branch3x3)
    branch3x3dbl = conv(448, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(384, (3, 3), padding=_same_padding((3, 3)),
                        name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl_a = conv(384, row, padding=_same_padding(row),
                          name='branch3x3dbl_3a')(branch3x3dbl)
    branch3x3dbl_b = conv(384, col, padding=_same_padding(col),
                          name='branch3x3dbl_3b')(branch3x3dbl)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3(x)
    elif self.pool == 'max':
      pooled = _max_pool_3x3(x)
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    branch_pool = conv(192, name='branch_pool')(pooled)
    return jnp.concatenate(
        [branch1x1, branch3x3_a, branch3x3_b, branch3x3dbl_a, branch3x3dbl_b,
         branch_pool], axis=-1)


class Classifier(nn.Module):
  """The graph's 1008-way classifier on the pool features: (pool @ W, pool @ W + b)."""
  num_classes: int = NUM_CLASSES
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, pool: Array) -> Tuple[Array, Array]:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (pool.shape[-1], self.num_classes))
    bias = self.param('bias', nn.initializers.zeros, (self.num_classes,))
    unbiased = jnp.dot(pool, kernel, precision=self.precision)
    return unbiased, unbiased + bias


def has_classifier(variables: Mapping[str, Any]) -> bool:
  """Whether `variables` carry the classifier (`params/fc`) the logits need."""
  return 'fc' in variables.get('params', {})


def check_outputs(outputs: Sequence[str]) -> Tuple[str, ...]:
  """`outputs` as a tuple, checked against `OUTPUTS`."""
  outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
  unknown = [o for o in outputs if o not in OUTPUTS]
  if unknown or not outputs:
    raise ValueError(f'unknown Inception outputs {unknown}; known: {OUTPUTS}')
  return outputs


class InceptionV3(nn.Module):
  """FID InceptionV3 returning 2048-d pool features (and, on request, ADM's extras).

  Attributes:
    image_size: side the input is resized to (299 for FID); None keeps the
      input size (at least 75x75 is needed), which tests use to stay cheap.
    antialias: antialias the resize when downsampling; the original protocol
      (and pytorch-fid) does not.
    clip: clip to [-1, 1] after resizing, as the original protocol does.
    precision: convolution precision; HIGHEST keeps GPUs from using TF32 so
      features stay within 1e-4 of pytorch-fid's float32 ones.
  """
  image_size: Optional[int] = IMAGE_SIZE
  antialias: bool = False
  clip: bool = True
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: Array, outputs: Optional[Sequence[str]] = None) -> Any:
    """Maps images in [-1, 1], NHWC, to float32 features [B, 2048].

    Args:
      images: [B, H, W, 3] in [-1, 1].
      outputs: None (the default) returns the pool features array; a sequence of names from
        `OUTPUTS` returns {name: float32 [B, D]} instead (module docstring): 'pool' [B, 2048],
        'spatial' [B, 7 g g] (g = 17 at 299x299), 'logits_unbiased' and 'logits' [B, 1008].

    Raises:
      ValueError: logits asked of variables without the classifier (`NO_CLASSIFIER_HELP`).
    """
    wanted = None if outputs is None else check_outputs(outputs)
    if (wanted and any(o in LOGIT_OUTPUTS for o in wanted) and not self.is_initializing()
        and not has_classifier(self.variables)):
      raise ValueError(NO_CLASSIFIER_HELP)
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected NHWC images with 3 channels, got shape '
                       f'{x.shape}')
    if self.image_size is not None:
      x = resize_images(x, (self.image_size, self.image_size), self.antialias)
    if self.clip:
      x = jnp.clip(x, -1.0, 1.0)
    conv = functools.partial(BasicConv2d, precision=self.precision)
    x = conv(32, (3, 3), strides=(2, 2), name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=_same_padding((3, 3)),
             name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    p = self.precision
    x = InceptionA(32, precision=p, name='Mixed_5b')(x)
    x = InceptionA(64, precision=p, name='Mixed_5c')(x)
    x = InceptionA(64, precision=p, name='Mixed_5d')(x)
    x = InceptionB(precision=p, name='Mixed_6a')(x)
    x = InceptionC(128, precision=p, name='Mixed_6b')(x)
    x = InceptionC(160, precision=p, name='Mixed_6c')(x)
    x = InceptionC(160, precision=p, name='Mixed_6d')(x)
    # TF's mixed_6/conv:0 is Mixed_6d.branch1x1, the first 192 channels of this output.
    spatial = x[..., :SPATIAL_CHANNELS]
    x = InceptionC(192, precision=p, name='Mixed_6e')(x)
    x = InceptionD(precision=p, name='Mixed_7a')(x)
    x = InceptionE('avg', precision=p, name='Mixed_7b')(x)
    x = InceptionE('max', precision=p, name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    if wanted is None:
      return pool
    out = {'pool': pool, 'spatial': spatial.reshape(spatial.shape[0], -1)}
    if any(o in LOGIT_OUTPUTS for o in wanted):
      out['logits_unbiased'], out['logits'] = Classifier(precision=p, name='fc')(pool)
    return {o: out[o] for o in wanted}


# ---------------------------------------------------------------------------
# Parameter trees: expected shapes, flattening, files.
# ---------------------------------------------------------------------------


CLASSIFIER_SHAPES = {'params/fc/kernel': (FEATURE_DIM, NUM_CLASSES),
                     'params/fc/bias': (NUM_CLASSES,)}


@functools.lru_cache(maxsize=1)
def _expected_flat_shapes() -> Mapping[str, Tuple[int, ...]]:
  """'collection/module/.../name' -> shape, from the module's own init."""
  model = InceptionV3(image_size=None)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 75, 75, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in flatten_variables(shapes).items()}


def expected_variable_shapes() -> Mapping[str, Tuple[int, ...]]:
  """Shapes of every variable, keyed 'params/Mixed_5b/branch1x1/conv/kernel'.

  The optional classifier is not among them (`CLASSIFIER_SHAPES`).

  Returns:
    A new dict from flat slash-joined path to shape tuple.
  """
  return dict(_expected_flat_shapes())


def flatten_variables(tree: Mapping[str, Any]) -> dict:
  """Flattens a nested dict into {'a/b/c': leaf}."""
  flat = {}

  def visit(prefix, node):
    if isinstance(node, Mapping):
      for key, value in node.items():
        visit(f'{prefix}/{key}' if prefix else str(key), value)
    else:
      flat[prefix] = node

  visit('', tree)
  return flat


def unflatten_variables(flat: Mapping[str, Any]) -> dict:
  """Inverse of `flatten_variables`."""
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def check_variables(variables: Mapping[str, Any], source: str = 'weights'
                    ) -> dict:
  """Checks names and shapes against the model; returns float32 numpy tree.

  Args:
    variables: {'params': ..., 'batch_stats': ...} nested dicts of arrays.
    source: what the variables came from, for error messages.

  The classifier (`params/fc/kernel` and `params/fc/bias`) is optional: both or neither.

  Returns:
    The same tree with float32 numpy leaves.

  Raises:
    ValueError: naming missing, unexpected or mis-shaped entries.
  """
  expected = dict(_expected_flat_shapes())
  flat = flatten_variables(variables)
  if any(path.startswith('params/fc/') for path in flat):
    expected.update(CLASSIFIER_SHAPES)
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  problems = []
  if missing:
    problems.append(f'{len(missing)} missing (e.g. {missing[:5]})')
  if unexpected:
    problems.append(f'{len(unexpected)} unexpected (e.g. {unexpected[:5]})')
  out = {}
  for path in sorted(set(flat) & set(expected)):
    array = np.asarray(flat[path])
    if tuple(array.shape) != expected[path]:
      problems.append(f'{path} has shape {tuple(array.shape)}, expected '
                      f'{expected[path]}')
    out[path] = array.astype(np.float32)
  if problems:
    raise ValueError(f'{source} do not match the FID InceptionV3: ' +
                     '; '.join(problems[:10]))
  return unflatten_variables(out)


def save_inception_variables(path: str, variables: Mapping[str, Any]) -> None:
  """Writes variables as the library's `.npz` (flat paths plus format keys).

  Args:
    path: destination file; written exactly there (no suffix is added).
    variables: {'params': ..., 'batch_stats': ...}; checked before writing.
  """
  variables = check_variables(variables, source=f'variables for {path}')
  arrays = flatten_variables(variables)
  arrays['__format__'] = np.array(FILE_FORMAT)
  # Without the classifier the file is version 1, which older readers accept.
  arrays['__version__'] = np.array(FILE_FORMAT_VERSION if has_classifier(variables) else 1)
  storage.write_npz(path, **arrays)  # Atomic: never a partial file at `path`.


def _read_library_npz(path: str) -> dict:
  try:
    with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
  except Exception as e:  # zipfile/zlib/OSError/ValueError on a bad file.
    raise ValueError(f'cannot read Inception weights {path}: not a valid .npz '
                     f'file (truncated or corrupt?): {e}') from e
  if any(k.endswith('data.pkl') for k in arrays):
    raise ValueError(
        f'{path} is a PyTorch checkpoint, not a converted weights file: '
        'convert it with `python -m shortcut_jax.tools.convert_inception '
        f'--pth {path} --out inception_fid.npz`.')
  fmt = arrays.pop('__format__', None)
  version = arrays.pop('__version__', None)
  if fmt is None or str(fmt) != FILE_FORMAT:
    raise ValueError(
        f'{path} is an .npz but not a shortcut_jax Inception file (its '
        f'__format__ is {fmt!r}, expected {FILE_FORMAT!r}). '
        + _MISSING_WEIGHTS_HELP)
  if version is None or int(version) > FILE_FORMAT_VERSION:
    raise ValueError(f'{path} has format version {version}; this library '
                     f'reads up to {FILE_FORMAT_VERSION}.')
  return unflatten_variables(arrays)


def _numpy_core_module(module: str) -> str:
  # Pickles made with numpy 1.x name `numpy.core.*`, renamed `numpy._core.*`
  # in numpy 2.
  if module.startswith('numpy.core') and hasattr(np, '_core'):
    return 'numpy._core' + module[len('numpy.core'):]
  return module


class _ArrayOnlyUnpickler(pickle.Unpickler):
  """Unpickler that rebuilds numpy arrays and dicts and nothing else."""

  _ALLOWED = {
      ('numpy._core.multiarray', '_reconstruct'),
      ('numpy._core.multiarray', 'scalar'),
      ('numpy._core.numeric', '_frombuffer'),
      ('numpy', 'ndarray'),
      ('numpy', 'dtype'),
      # Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`.
      ('_codecs', 'encode'),
  }
  # Containers whose pickled form is "call with one dict": rebuilt as dict.
  _AS_DICT = {
      ('flax.core.frozen_dict', 'FrozenDict'),
      ('collections', 'OrderedDict'),
  }

  def find_class(self, module, name):
    if (module, name) in self._AS_DICT:
      return dict
    key = (_numpy_core_module(module), name)
    if key in self._ALLOWED:
      return super().find_class(*key)
    hint = ''
    if module.split('.')[0] == 'torch':
      hint = (' (this is a PyTorch checkpoint: convert it first with '
              '`python -m shortcut_jax.tools.convert_inception`)')
    raise pickle.UnpicklingError(
        f'refusing to load {module}.{name}: only numpy arrays and dicts are '
        f'allowed in an Inception weights pickle{hint}')


def _to_numpy(x):
  if isinstance(x, np.ndarray):
    return x
  raise ValueError(f'expected a numpy array, got {type(x).__name__}')


def variables_from_original_pickle(tree: Mapping[str, Any]) -> dict:
  """Maps the original's Flax-port dict to this module's variables.

  The original layout is `{block: {'conv': {'kernel'}, 'bn': {'scale', 'bias',
  'mean', 'var'}}}` for stem convolutions and `{block: {branch: {...}}}` for
  Mixed blocks, kernels already HWIO. A conv `bias`, if present, is dropped; `fc` (the
  classifier) is kept as `params/fc` when it holds `kernel` [2048, 1008] and `bias` [1008]
  (what a Flax Dense port stores), otherwise dropped with a warning (the logits are then
  unavailable).

  Args:
    tree: the unpickled nested dict.

  Returns:
    {'params': ..., 'batch_stats': ...} with numpy leaves (unchecked).
  """
  params, batch_stats = {}, {}

  def add_conv(path, node):
    try:
      conv, bn = node['conv'], node['bn']
      leaf = params
      stats = batch_stats
      for key in path:
        leaf = leaf.setdefault(key, {})
        stats = stats.setdefault(key, {})
      leaf['conv'] = {'kernel': _to_numpy(conv['kernel'])}
      leaf['bn'] = {'scale': _to_numpy(bn['scale']),
                    'bias': _to_numpy(bn['bias'])}
      stats['bn'] = {'mean': _to_numpy(bn['mean']),
                     'var': _to_numpy(bn['var'])}
    except (KeyError, TypeError) as e:
      raise ValueError(f'original Inception pickle: entry {"/".join(path)} '
                       f'lacks {e} (expected conv/kernel and bn/scale, bias, '
                       'mean, var)') from e

  for block, node in tree.items():
    if block == 'fc':
      try:
        fc = {'kernel': _to_numpy(node['kernel']), 'bias': _to_numpy(node['bias'])}
      except (KeyError, TypeError, ValueError):
        fc = None
      if fc is not None and all(fc[k].shape == CLASSIFIER_SHAPES[f'params/fc/{k}']
                                for k in fc):
        params['fc'] = fc
      else:
        logging.warning('original Inception pickle: its fc entry is not a [2048, 1008] kernel '
                        'and a [1008] bias; dropped (no logits, no Inception Score)')
      continue
    if block == 'AuxLogits':
      continue
    if not isinstance(node, Mapping):
      raise ValueError(f'original Inception pickle: {block} is not a dict')
    if 'conv' in node:
      add_conv((block,), node)
    else:
      for branch, sub in node.items():
        add_conv((block, branch), sub)
  return {'params': params, 'batch_stats': batch_stats}


def _read_original_pickle(path: str) -> dict:
  try:
    tree = _ArrayOnlyUnpickler(io.BytesIO(storage.read_bytes(path))).load()
  except pickle.UnpicklingError as e:
    raise ValueError(f'cannot read Inception weights {path}: {e}') from e
  except (EOFError, ValueError, TypeError, AttributeError, ImportError,
          IndexError) as e:
    raise ValueError(f'cannot read Inception weights {path}: not a valid '
                     f'pickle (truncated or corrupt?): {e!r}') from e
  if not isinstance(tree, Mapping):
    raise ValueError(
        f'{path}: expected a dict of blocks, got {type(tree).__name__}. A '
        'PyTorch .pth must be converted first with `python -m '
        'shortcut_jax.tools.convert_inception`.')
  return variables_from_original_pickle(tree)


def resolve_weights_path(path: Optional[str] = None) -> str:
  """Returns the weights path from the argument or `SHORTCUT_JAX_INCEPTION`.

  Args:
    path: explicit path; None to use the environment variable.

  Returns:
    An existing file path.

  Raises:
    FileNotFoundError: with instructions on where to get the weights.
  """
  source = 'argument path'
  if path is None:
    path = os.environ.get(ENV_VAR)
    source = f'environment variable {ENV_VAR}'
    if not path:
      raise FileNotFoundError(
          f'No Inception weights file given: pass path= or set {ENV_VAR}. ' +
          _MISSING_WEIGHTS_HELP)
  path = os.path.expanduser(os.fspath(path))
  if not storage.isfile(path):
    raise FileNotFoundError(
        f'Inception weights file {path} (from the {source}) does not exist. ' +
        _MISSING_WEIGHTS_HELP)
  return path


def load_inception_variables(path: Optional[str] = None) -> dict:
  """Reads and checks FID Inception variables from either supported file.

  Args:
    path: a library `.npz` or the original's `.pickle`; None reads
      `$SHORTCUT_JAX_INCEPTION`.

  Returns:
    {'params': ..., 'batch_stats': ...} with float32 numpy leaves.
  """
  path = resolve_weights_path(path)
  with storage.open(path, 'rb') as f:
    magic = f.read(4)
  if magic.startswith(b'PK'):
    variables = _read_library_npz(path)
  else:
    variables = _read_original_pickle(path)
  variables = check_variables(variables, source=f'weights in {path}')
  logging.info('Loaded FID InceptionV3 weights from %s', path)
  return variables


def make_feature_fn(variables: Variables, *, antialias: bool = False,
                    image_size: Optional[int] = IMAGE_SIZE,
                    clip: bool = True,
                    outputs: Optional[Sequence[str]] = None) -> Callable[[Array], Any]:
  """Builds a jitted images -> features function around given variables.

  Args:
    variables: {'params': ..., 'batch_stats': ...}.
    antialias: antialiased resize (off in the original protocol).
    image_size: resize target (299 for FID; smaller only for tests).
    clip: clip to [-1, 1] after resizing.
    outputs: None: the pool features; else names from `OUTPUTS` (`InceptionV3.__call__`).

  Returns:
    feature_fn(images [B, H, W, 3] in [-1, 1]) -> float32 [B, 2048] (or {name: [B, D]} with
    `outputs`). The variables are passed as a jit argument, not baked in as constants.

  Raises:
    ValueError: logits asked of variables without the classifier.
  """
  if outputs is not None:
    outputs = check_outputs(outputs)
    if any(o in LOGIT_OUTPUTS for o in outputs) and not has_classifier(variables):
      raise ValueError(NO_CLASSIFIER_HELP)
  model = InceptionV3(image_size=image_size, antialias=antialias, clip=clip)
  variables = jax.device_put(variables)
  apply = jax.jit(functools.partial(model.apply, outputs=outputs))

  def feature_fn(images: Array) -> Array:
    return apply(variables, images)

  return feature_fn


def load_inception(path: Optional[str] = None, *, antialias: bool = False,
                   image_size: Optional[int] = IMAGE_SIZE,
                   clip: bool = True) -> Callable[[Array], Array]:
  """Loads FID InceptionV3 weights and returns a jitted feature function.

  Args:
    path: the library's `.npz` (from `shortcut_jax.tools.convert_inception`)
      or the original's `inception_v3_weights_fid.pickle`; None reads the
      path from the environment variable `SHORTCUT_JAX_INCEPTION`.
    antialias: antialiased resize to 299 (off in the original protocol).
    image_size: resize target; keep 299 for FID.
    clip: clip to [-1, 1] after resizing, as the original does.

  Returns:
    feature_fn(images) -> float32 [B, 2048], images NHWC in [-1, 1].

  Raises:
    FileNotFoundError: no path, or the file is missing (the message says where
      to get the weights and how to convert them).
    ValueError: the file is corrupt or does not match the network.
  """
  variables = load_inception_variables(path)
  return make_feature_fn(variables, antialias=antialias,
                         image_size=image_size, clip=clip)


__all__: Sequence[str] = (
    'CLASSIFIER_SHAPES', 'Classifier', 'ENV_VAR', 'FEATURE_DIM', 'FILE_FORMAT',
    'FILE_FORMAT_VERSION', 'IMAGE_SIZE', 'InceptionV3', 'LOGIT_OUTPUTS', 'MIXED_NAMES',
    'NO_CLASSIFIER_HELP', 'NUM_CLASSES', 'OUTPUTS', 'PYTORCH_FID_WEIGHTS_URL',
    'SPATIAL_CHANNELS', 'check_outputs', 'check_variables', 'has_classifier',
    'expected_variable_shapes', 'flatten_variables',
    'load_inception', 'load_inception_variables', 'make_feature_fn',
    'bilinear_resize_matrix', 'resize_images', 'resolve_weights_path',
    'save_inception_variables', 'unflatten_variables',
    'variables_from_original_pickle')
