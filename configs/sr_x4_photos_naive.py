"""Baseline for `sr_x4_photos.py`: the same network and data trained with flow matching.

Command:
  python train.py --config=configs/sr_x4_photos_naive.py --workdir=workdirs/sr_x4_photos_naive
  python eval.py --workdir=workdirs/sr_x4_photos_naive --mode=sr_metrics --steps=1,2,4,8
Hardware and budget: as `sr_x4_photos.py` (2 CPU cores, under 20 minutes).
Result: docs/results.md (flow matching needs several steps where the shortcut model needs one).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos")(None)
  c.unlock()
  c.objective.name = "naive"
  return config_lib.finalize(c, arg)
