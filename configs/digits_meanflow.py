"""MeanFlow on the embedded digits: the network, data and budget of `digits_shortcut.py`.

Command:
  python train.py --config=configs/digits_meanflow.py --workdir=workdirs/digits_meanflow
Hardware: 2 CPU cores, the default's steps at batch 64 (a MeanFlow step
adds a jvp of the network, about one and a half forward passes, to the shortcut step's cost).
Result: 1-step samples by the average-velocity jump; FD-digits and class accuracy at 1 … 128
steps in docs/results.md (1 step: 19.33; 128 steps: 5.43, the lowest of the objectives there).
The paper's time sampling (logit-normal (-0.4, 1.0), r = t on 75 % of the batch) and adaptive
weighting (p = 1) are the `base_config` defaults; no guidance in the target.
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.name = "meanflow"
  return config_lib.finalize(c, arg)
