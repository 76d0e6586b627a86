"""The 2-D Haar wavelet transform and the multi-level wavelet loss of improved shortcut models
(iSM, Nguyen et al. 2025: "multi-level wavelet loss" against the frequency bias of a plain MSE).

One level of the orthonormal Haar transform splits an image [..., H, W, C] (H, W even) into four
half-size sub-bands from each 2x2 block (a b / c d):

    LL = (a + b + c + d) / 2     LH = (a - b + c - d) / 2   (differences along the width)
    HL = (a + b - c - d) / 2     HH = (a - b - c + d) / 2   (along the height; both)

The transform is orthonormal (it keeps the sum of squares), and the next level transforms LL.

The loss (`wavelet_loss`): the error (prediction - target; the transform is linear) through
`levels` levels, or as many as the size allows (H and W divisible by 2^levels; iSM uses 5 on
32x32 latents), gives 3 detail bands per level and the last LL; the loss of a sample is the
mean over those 3 levels + 1 bands of each band's mean squared coefficient. The paper does not
say its weighting; this one weighs every band equally, so a coarse band (few coefficients)
counts as much as the finest detail band, where the plain MSE weighs bands by their size (it is
the same sum with weights size_b / size). With levels = 0 it is the MSE.
"""

from typing import Any, List

import jax.numpy as jnp

Array = Any


def haar_level(x: Array):
  """One Haar level of x [B, H, W, C] -> (LL, LH, HL, HH), each [B, H/2, W/2, C]."""
  a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
  c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
  return ((a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2)


def usable_levels(height: int, width: int, levels: int) -> int:
  """The most levels up to `levels` that halve H and W to whole sizes."""
  n = 0
  while n < levels and height % 2 == 0 and width % 2 == 0 and height > 1 and width > 1:
    height, width, n = height // 2, width // 2, n + 1
  return n


def haar_bands(x: Array, levels: int) -> List[Array]:
  """The detail bands of each level (finest first, LH, HL, HH) and the last LL, for as many
  levels up to `levels` as the size allows."""
  bands = []
  for _ in range(usable_levels(x.shape[1], x.shape[2], levels)):
    x, lh, hl, hh = haar_level(x)
    bands += [lh, hl, hh]
  return bands + [x]


def wavelet_loss(pred: Array, target: Array, levels: int) -> Array:
  """Per-sample multi-level wavelet loss [B] in float32 (module docstring)."""
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  per_band = [jnp.mean(jnp.square(b), axis=tuple(range(1, b.ndim)))
              for b in haar_bands(diff, levels)]
  return jnp.mean(jnp.stack(per_band), axis=0)
