"""Baseline for `sr_x4_photos.py`: the same DiT trained with MSE to predict HR from LR, one pass.

The honest bar for one-step generative super-resolution: a deterministic regressor of the same
size and budget (the `regression` objective: a one-step flow from an all-zero source).
Command:
  python train.py --config=configs/sr_x4_photos_regression.py --workdir=workdirs/sr_x4_photos_regression
  python eval.py --workdir=workdirs/sr_x4_photos_regression --mode=sr_metrics --steps=1
Hardware and budget: as `sr_x4_photos.py`. Result: docs/results.md.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos")(None)
  c.unlock()
  c.objective.name = "regression"
  c.evals.samples.steps = (1,)
  c.evals.loss_per_t.every = 0  # Defined for flows (t in [0, 1]); the regressor lives at t = 0.
  return config_lib.finalize(c, arg)
