"""Random InceptionV3 weights for FID tests (no download): the real variable shapes."""

import numpy as np


def random_inception_variables(seed=0, gain=2.0):
  """Random weights; gain 2 (above He's sqrt 2) keeps features well above the FID epsilon."""
  from shortcut_jax.models import inception
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in inception.expected_variable_shapes().items():
    if path.endswith("kernel"):
      flat[path] = rng.normal(size=shape) * gain / np.sqrt(np.prod(shape[:-1]))
    elif path.endswith(("var", "scale")):
      flat[path] = np.ones(shape)
    else:
      flat[path] = np.zeros(shape)
  return inception.unflatten_variables({k: v.astype(np.float32) for k, v in flat.items()})
