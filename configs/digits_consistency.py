"""Consistency training (no teacher) on the embedded digits: the network, data, optimizer and
budget of `digits_shortcut.py`.

Command:
  python train.py --config=configs/digits_consistency.py --workdir=workdirs/digits_consistency
Budget: the default's steps at batch 64, from scratch; a step costs about 1.25 naive
steps (1.1 shortcut steps: one target-network pass per sample). N schedule: 7 phases of about
285 steps with N = 1, 2, 4, ..., 64 intervals; the target network is the EMA (rate 0.99, the
default's).
Result: 1-step samples f(x0, 0) and the multistep consistency sampler (predict x1, re-noise,
repeat) for more steps. FD-digits and class accuracy via `python eval.py --mode=digits_metrics`.
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.name = "consistency"
  return config_lib.finalize(c, arg)
