"""HaarPSI: invariants here, and piq's implementation as the reference (`scripts/test.sh --reference`)."""

import importlib.util

import numpy as np
import pytest

from shortcut_jax.evaluators import haarpsi
from shortcut_jax.evaluators import sr_quality

HAS_PIQ = importlib.util.find_spec("piq") is not None and importlib.util.find_spec(
    "torch") is not None


def _pair(seed, shape, noise):
  rng = np.random.default_rng(seed)
  a = rng.uniform(0, 255, shape)
  return a, np.clip(a + rng.normal(0, noise, shape), 0, 255)


def test_identity_symmetry_and_order():
  a, b = _pair(0, (1, 32, 40, 3), 10.0)
  np.testing.assert_allclose(haarpsi.haarpsi(a, a), 1.0, atol=1e-12)
  np.testing.assert_allclose(haarpsi.haarpsi(a, b), haarpsi.haarpsi(b, a), rtol=1e-12)
  scores = [haarpsi.haarpsi(*_pair(0, (1, 32, 40, 3), noise))[0] for noise in (2, 8, 32)]
  assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0  # More noise, less similar.
  with pytest.raises(ValueError, match="at least 16"):
    haarpsi.haarpsi(a[:, :12], a[:, :12])


def test_sr_metrics_carry_haarpsi_of_the_rounded_images():
  a, b = _pair(1, (2, 24, 24, 3), 6.0)
  ref, img = a / 127.5 - 1, b / 127.5 - 1
  per_image = sr_quality.sr_metrics_per_image(ref, img)
  expected = haarpsi.haarpsi(np.round(a), np.round(b))
  np.testing.assert_allclose(per_image["haarpsi"], expected, rtol=1e-12)
  assert "haarpsi" not in sr_quality.sr_metrics_per_image(ref, img, crop_border=5)  # 14 px.


@pytest.mark.reference
@pytest.mark.skipif(not HAS_PIQ, reason="needs piq and torch")
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 33, 40, 3), (1, 37, 31, 1)])
def test_haarpsi_equals_piq(shape):
  import piq
  import torch
  a, b = _pair(2, shape, 15.0)
  to_torch = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
  expected = piq.haarpsi(to_torch(a), to_torch(b), data_range=255.0, reduction="none").numpy()
  np.testing.assert_allclose(haarpsi.haarpsi(a, b), expected, rtol=1e-10)
