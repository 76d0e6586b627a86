"""The flow-matching baseline of `digits_shortcut.py`: same network, data and budget.

Command:
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
Hardware: 2 CPU cores, about 10 minutes.
Result: good samples at 128 steps, blurry averages at 1 step (the comparison the paper makes).
"""

import importlib.util
import os

from shortcut_jax import config as config_lib


def _digits_shortcut():
  # Loaded by path so this file works however it is loaded (config_flags, import, tests).
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_shortcut.py")
  spec = importlib.util.spec_from_file_location("digits_shortcut_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _digits_shortcut().get_config()
  c.unlock()
  c.objective.name = "naive"
  return config_lib.finalize(c, arg)
