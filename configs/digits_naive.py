"""The flow-matching baseline of `digits_shortcut.py`: same network, data and budget.

Command:
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
Hardware: 2 CPU cores, about 7.5 minutes.
Result: good samples at 128 steps, blurry averages at 1 step (the comparison the paper makes).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.name = "naive"
  return config_lib.finalize(c, arg)
