"""Tests of `shortcut_jax.tiling`: positions, exact reconstruction, normalised blending."""

import numpy as np
import pytest

from shortcut_jax import tiling


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (64, 32, 0), (65, 32, 8),
                                               (32, 32, 8), (20, 32, 8), (1000, 128, 32)])
def test_tile_positions_cover_with_overlap(size, tile, overlap):
  positions = tiling.tile_positions(size, tile, overlap)
  assert positions[0] == 0 and positions[-1] == max(size - tile, 0)
  assert positions == sorted(set(positions))
  gaps = np.diff(positions)
  assert (gaps <= tile - overlap).all()  # Neighbours overlap by at least `overlap`.
  covered = np.zeros(max(size, tile), bool)
  for p in positions:
    covered[p:p + tile] = True
  assert covered.all()
  # No more tiles than needed: one fewer could not keep the overlap.
  assert len(positions) == (1 if size <= tile else -(-(size - tile) // (tile - overlap)) + 1)


def test_tile_positions_rejects_bad_overlap():
  with pytest.raises(ValueError, match="overlap"):
    tiling.tile_positions(100, 32, 32)
  with pytest.raises(ValueError, match="overlap"):
    tiling.tile_positions(100, 32, -1)


@pytest.mark.parametrize("shape", [(100, 70, 3), (64, 64, 1), (20, 45, 3), (13, 9, 2),
                                   (1, 40, 3), (33, 200, 3)])
def test_identity_round_trip_is_exact(shape):
  rng = np.random.RandomState(sum(shape))
  image = rng.uniform(-1, 1, shape).astype(np.float32)
  tile, overlap = 32, 10
  tiles, positions = tiling.split_tiles(image, tile, overlap)
  assert tiles.shape[1:] == (tile, tile, shape[2]) and len(tiles) == len(positions)
  for t, (y, x) in zip(tiles[:3], positions[:3]):
    h, w = min(tile, shape[0] - y), min(tile, shape[1] - x)
    np.testing.assert_array_equal(t[:h, :w], image[y:y + h, x:x + w])
  out = tiling.blend_tiles(tiles, positions, shape, tile, overlap)
  assert out.shape == shape and out.dtype == np.float32
  np.testing.assert_allclose(out, image, atol=1e-6)


def test_small_image_is_reflect_padded():
  image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7, 1)
  tiles, positions = tiling.split_tiles(image, 8, 2)
  assert positions == [(0, 0)]
  # Reflection without repeating the edge row: row 5 is row 3, row 6 is row 2.
  np.testing.assert_array_equal(tiles[0, 5, :7], image[3])
  np.testing.assert_array_equal(tiles[0, 6, :7], image[2])
  np.testing.assert_array_equal(tiles[0, :5, 7], image[:, 5])


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_apply_tiled_constant_offset_and_fixed_batches(batch_size):
  image = np.random.RandomState(0).uniform(-1, 1, (50, 77, 3)).astype(np.float32)
  shapes = []

  def add_half(batch):
    shapes.append(batch.shape)
    return batch + 0.5

  out = tiling.apply_tiled(add_half, image, tile=24, overlap=6, batch_size=batch_size)
  np.testing.assert_allclose(out, image + 0.5, atol=1e-6)  # The weights are normalised.
  assert set(shapes) == {(batch_size, 24, 24, 3)}
  n_tiles = len(tiling.split_tiles(image, 24, 6)[1])
  assert len(shapes) == -(-n_tiles // batch_size)


def test_blend_is_smooth_across_seams():
  # Tiles that each hold one constant value (their index): the blend must change gradually
  # over the overlap instead of jumping, and stay within the values of the covering tiles.
  image = np.zeros((16, 60, 1), np.float32)
  tiles, positions = tiling.split_tiles(image, 16, 8)
  values = np.arange(len(tiles), dtype=np.float32)
  tiles = np.broadcast_to(values[:, None, None, None], tiles.shape)
  out = tiling.blend_tiles(tiles, positions, image.shape, 16, 8)[0, :, 0]
  assert np.all(np.diff(out) >= -1e-6) and out[0] == 0 and out[-1] == values[-1]
  assert np.abs(np.diff(out)).max() < 0.5  # Gradual: a hard seam would jump by 1.


def test_blend_steps_of_a_pointwise_process_is_the_untiled_process():
  """Every step starts all tiles from the blended canvas: a per-pixel process (here depending on
  the step and on a fixed noise image cropped per tile) gives the untiled result."""
  rng = np.random.RandomState(3)
  canvas = rng.uniform(-1, 1, (37, 50, 2)).astype(np.float32)
  noise = rng.normal(size=(3,) + canvas.shape).astype(np.float32)
  positions = tiling.tile_grid(37, 50, 16, 5)
  calls = []

  def step(tiles, k, rows, j):
    calls.append((k, len(rows)))
    crops = tiling.crop_tiles(noise[j], [positions[r] for r in rows], 16)
    return np.tanh(tiles) + 0.1 * (j + 1) * crops

  out = tiling.blend_steps(step, canvas, positions, 16, 5, batch_size=4, num_steps=3)
  expected = canvas
  for j in range(3):
    expected = np.tanh(expected) + 0.1 * (j + 1) * noise[j]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  batches = -(-len(positions) // 4)
  assert calls == [(k, 4) for k in range(batches)] * 3
  assert [list(r) for r in tiling.tile_batches(5, 2)] == [[0, 1], [2, 3], [4, 4]]
