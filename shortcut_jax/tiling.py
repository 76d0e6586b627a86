"""Processing an image of any size with a model trained on S×S tiles: split, apply, blend.

A super-resolution model trained on `data.image_size` = S works on S×S inputs. To upscale a
larger (or smaller, or non-square) image, `apply_tiled` cuts the image into overlapping S×S
tiles (`split_tiles`), runs the model on batches of them, and blends the outputs back
(`blend_tiles`). Blending weights every tile with a separable window that is 1 in its middle
and rises with a raised-cosine ramp over the `overlap` pixels at each side that touches a
neighbouring tile (sides on the image border stay flat); the sum is divided by the summed
weights, so seams fade smoothly and a function that leaves tiles unchanged gives back the
image exactly. The window is never zero, so every pixel has a positive total weight.

Tile positions along an axis are spread evenly from 0 to `size - tile`: the first tile starts
at the border, the last one ends flush with the other border, and neighbours overlap by at
least `overlap` pixels. An image side smaller than the tile is reflect-padded to the tile size
first (and the padding cropped off after blending).

Iterative processes (a few-step sampler) use `blend_steps`: every step maps each tile of the
current canvas (`crop_tiles`) and blends the results into the next canvas, so neighbouring
tiles start every step from the same values; a random input (the sampler's noise) is one
array the size of the canvas, cropped per tile like the canvas (`crop_tiles`), so overlapping
tiles see the same noise there.
"""

import math
from typing import Callable, List, Sequence, Tuple

import numpy as np

Position = Tuple[int, int]


def _check(tile: int, overlap: int):
  if tile <= 0:
    raise ValueError(f"tile must be positive, got {tile}")
  if not 0 <= overlap < tile:
    raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")


def tile_positions(size: int, tile: int, overlap: int) -> List[int]:
  """Start offsets of tiles of side `tile` covering [0, size) with at least `overlap` overlap.

  Args:
    size: length of the axis (a size <= tile gives the single position 0: `split_tiles` pads).
    tile: tile side.
    overlap: minimal overlap of neighbouring tiles, in [0, tile).

  Returns:
    Increasing offsets; the first is 0 and the last `max(size - tile, 0)`.
  """
  _check(tile, overlap)
  if size <= 0:
    raise ValueError(f"size must be positive, got {size}")
  if size <= tile:
    return [0]
  count = math.ceil((size - tile) / (tile - overlap)) + 1
  # Evenly spread: every gap is at most tile - overlap, so every overlap is at least `overlap`.
  return [int(round(k * (size - tile) / (count - 1))) for k in range(count)]


def _padded_shape(height: int, width: int, tile: int) -> Tuple[int, int]:
  return max(height, tile), max(width, tile)


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """`image` [H, W, C] reflect-padded at the bottom/right to at least height × width (a single
  row or column, with nothing to reflect, is repeated)."""
  image = np.asarray(image)
  h, w = image.shape[:2]
  padded_h, padded_w = max(h, int(height)), max(w, int(width))
  if (padded_h, padded_w) == (h, w):
    return image
  # numpy's reflect mode repeats the reflection when the pad is longer than the image.
  mode = "reflect" if min(h, w) > 1 else "edge"
  return np.pad(image, ((0, padded_h - h), (0, padded_w - w), (0, 0)), mode=mode)


def tile_grid(height: int, width: int, tile: int, overlap: int) -> List[Position]:
  """The `(y, x)` corners (row-major) of the tiles covering a height × width canvas, padded to
  at least a tile (`split_tiles`'s positions)."""
  padded_h, padded_w = _padded_shape(height, width, tile)
  return [(y, x) for y in tile_positions(padded_h, tile, overlap)
          for x in tile_positions(padded_w, tile, overlap)]


def crop_tiles(canvas: np.ndarray, positions: Sequence[Position], tile: int) -> np.ndarray:
  """The `tile`×`tile` crops of `canvas` [H, W, C] at `positions`: [n, tile, tile, C]."""
  canvas = np.asarray(canvas)
  return np.stack([canvas[y:y + tile, x:x + tile] for y, x in positions])


def tile_batches(count: int, batch_size: int) -> List[np.ndarray]:
  """Tile indices of every call of a batched function: `batch_size` each, the last batch
  padded with copies of its last index (so a jitted function compiles once)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  batches = []
  for start in range(0, count, batch_size):
    rows = np.arange(start, min(start + batch_size, count))
    batches.append(np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])]))
  return batches


def blend_steps(fn: Callable[[np.ndarray, int, np.ndarray, int], np.ndarray], canvas: np.ndarray,
                positions: Sequence[Position], tile: int, overlap: int, batch_size: int,
                num_steps: int) -> np.ndarray:
  """Runs an iterative per-tile process on a whole canvas, blending the tiles after every step.

  Step j crops every tile of the current canvas, calls `fn(tiles, k, rows, j)` on batch k
  (`tiles` [batch_size, tile, tile, C] are the canvas at the tile indices `rows`, see
  `tile_batches`; padding rows' outputs are dropped) and blends all outputs (`blend_tiles`)
  into the next canvas. A process that maps each pixel by its own values alone therefore gives
  the canvas it would give untiled.

  Args:
    fn: one step on a batch of tiles, returning tiles of the same size (any channel count).
    canvas: [H, W, C] with every tile inside it (H, W >= tile, e.g. `pad_image`).
    positions: the tile corners (`tile_grid(H, W, tile, overlap)`).
    tile, overlap: as for `blend_tiles`.
    batch_size: tiles per call.
    num_steps: steps.

  Returns:
    The canvas after the last step, [H, W, C'] (float32 for float32 outputs).
  """
  canvas = np.asarray(canvas)
  if canvas.shape[0] < tile or canvas.shape[1] < tile:
    raise ValueError(f"the canvas {canvas.shape[:2]} is smaller than a tile ({tile}): pad it")
  batches = tile_batches(len(positions), batch_size)
  for j in range(num_steps):
    outputs = []
    for k, rows in enumerate(batches):
      tiles = crop_tiles(canvas, [positions[r] for r in rows], tile)
      out = np.asarray(fn(tiles, k, rows, j))
      if out.shape[:3] != tiles.shape[:3]:
        raise ValueError(f"fn must map {tiles.shape} to tiles of the same size, got {out.shape}")
      real = min(batch_size, len(positions) - k * batch_size)
      outputs.append(out[:real])
    canvas = blend_tiles(np.concatenate(outputs), positions, canvas.shape, tile, overlap)
  return canvas


def split_tiles(image: np.ndarray, tile: int,
                overlap: int) -> Tuple[np.ndarray, List[Position]]:
  """Cuts `image` into overlapping `tile`×`tile` tiles.

  Args:
    image: array [H, W, C], any size (sides shorter than `tile` are reflect-padded at the
      bottom/right).
    tile: tile side.
    overlap: minimal overlap of neighbouring tiles, in [0, tile).

  Returns:
    `(tiles, positions)`: tiles [n, tile, tile, C] (row-major order) and their top-left
    corners `(y, x)` in the padded image.
  """
  _check(tile, overlap)
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
  height, width = image.shape[:2]
  image = pad_image(image, tile, tile)
  positions = tile_grid(height, width, tile, overlap)
  return crop_tiles(image, positions, tile), positions


def _ramp_window(start: int, size: int, tile: int, overlap: int) -> np.ndarray:
  """1-D weights of a tile at `start` on an axis of `size`: ramps only towards neighbours."""
  window = np.ones(tile, np.float64)
  if overlap == 0:
    return window
  # Raised cosine sampled at pixel centres: strictly between 0 and 1, never zero.
  ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
  if start > 0:
    window[:overlap] *= ramp
  if start + tile < size:
    window[tile - overlap:] *= ramp[::-1]
  return window


def blend_tiles(tiles: np.ndarray, positions: Sequence[Position], out_shape: Sequence[int],
                tile: int, overlap: int) -> np.ndarray:
  """Blends (processed) tiles back into one image: window-weighted sum / summed weights.

  Args:
    tiles: [n, tile, tile, C] in the order of `positions`.
    positions: the `(y, x)` corners returned by `split_tiles`.
    out_shape: `(H, W)` or `(H, W, C)` of the unpadded image to rebuild (C from `tiles`).
    tile: tile side.
    overlap: the overlap used by `split_tiles`.

  Returns:
    array [H, W, C] of dtype `result_type(tiles.dtype, float32)` (accumulated in float64).
  """
  _check(tile, overlap)
  tiles = np.asarray(tiles)
  if tiles.ndim != 4 or tiles.shape[1:3] != (tile, tile):
    raise ValueError(f"expected tiles [n, {tile}, {tile}, C], got shape {tiles.shape}")
  if len(positions) != len(tiles):
    raise ValueError(f"{len(tiles)} tiles but {len(positions)} positions")
  height, width = int(out_shape[0]), int(out_shape[1])
  padded_h, padded_w = _padded_shape(height, width, tile)
  total = np.zeros((padded_h, padded_w, tiles.shape[-1]), np.float64)
  weight = np.zeros((padded_h, padded_w, 1), np.float64)
  for t, (y, x) in zip(tiles, positions):
    w = np.outer(_ramp_window(y, padded_h, tile, overlap),
                 _ramp_window(x, padded_w, tile, overlap))[..., None]
    total[y:y + tile, x:x + tile] += w * t
    weight[y:y + tile, x:x + tile] += w
  out = (total / weight)[:height, :width]
  return out.astype(np.result_type(tiles.dtype, np.float32))


def apply_tiled(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int,
                overlap: int, batch_size: int) -> np.ndarray:
  """Applies `fn` to `image` tile by tile and blends the results.

  Every call of `fn` gets exactly `batch_size` tiles: the last batch is padded with copies of
  its last tile (their outputs are dropped), so a jitted `fn` compiles once.

  Args:
    fn: maps a batch [batch_size, tile, tile, C] to an array of the same shape (e.g. a jitted
      super-resolution sampler conditioned on the upsampled LR tiles).
    image: [H, W, C], any size.
    tile: tile side (the model's training size).
    overlap: minimal overlap of neighbouring tiles (e.g. tile // 4).
    batch_size: tiles per call of `fn`.

  Returns:
    array [H, W, C]: the blended outputs (float32 for float32 outputs of `fn`).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  image = np.asarray(image)
  tiles, positions = split_tiles(image, tile, overlap)
  outputs = []
  for start in range(0, len(tiles), batch_size):
    chunk = tiles[start:start + batch_size]
    real = len(chunk)
    if real < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
    out = np.asarray(fn(chunk))
    if out.shape[:3] != chunk.shape[:3]:
      raise ValueError(f"fn must map {chunk.shape} to tiles of the same size, got {out.shape}")
    outputs.append(out[:real])
  return blend_tiles(np.concatenate(outputs), positions, image.shape, tile, overlap)
