"""Checks the end-to-end objective tests share: a resumed run's weights against a straight run's,
and samples written through `evaluation.run('sample')` (what eval.py runs)."""

import jax
import numpy as np


def assert_same_weights(workdir_a, workdir_b):
  """The final online weights of two workdirs are bit-identical."""
  from shortcut_jax import experiment
  a = jax.device_get(experiment.restore_experiment(str(workdir_a))[1].params)
  b = jax.device_get(experiment.restore_experiment(str(workdir_b))[1].params)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_samples(workdir, image_shape, steps=(1, 2), num_samples=3, cfg_scale=1.5):
  """`--mode=sample` writes `num_samples` uint8 images of `image_shape` for every step budget."""
  from shortcut_jax import evaluation
  written = evaluation.run("sample", str(workdir), steps=list(steps), num_samples=num_samples,
                           cfg_scale=cfg_scale)
  for n in steps:
    with np.load(written[n]) as f:
      assert f["images"].shape == (num_samples, *image_shape), f["images"].shape
      assert f["images"].dtype == np.uint8 and f["images"].std() > 0  # not one flat colour
