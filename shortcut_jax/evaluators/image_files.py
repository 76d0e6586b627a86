"""Generated images as files: [-1, 1] floats to uint8, grids, and image files (local or remote)."""

import io
import os
from typing import Optional

import numpy as np

from shortcut_jax import storage


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (clipped)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


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
