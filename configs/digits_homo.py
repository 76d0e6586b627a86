"""HOMO (higher-order matching) on the embedded digits: the data, width and budget of
`digits_shortcut.py`, with a second-order objective on a curved path.

Command:
  python train.py --config=configs/digits_homo.py --workdir=workdirs/digits_homo
Hardware: 2 CPU cores, the default's steps at batch 64.
Result: FD-digits and class accuracy at 1 … 128 steps in docs/results.md
(`python eval.py --mode=digits_metrics ...`), next to shortcut, flow matching and MeanFlow.
Settings: the smoothstep path (on the linear path the acceleration target is zero), the default
loss weights 1.0 / 0.5 / 0.1 (velocity / acceleration / self-consistency; not tuned here), and
the acceleration as a second output head of the one
DiT (`model.acceleration='head'`): a second DiT (`'network'`, the paper's acceleration model,
which sees the predicted velocity) doubles the step time and would not fit the budget at the
same width (docs/benchmarks.md, "Objectives").
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.update(name="homo", path="smoothstep", homo_lambda_v=1.0, homo_lambda_a=0.5,
                     homo_lambda_sc=0.1)
  c.model.acceleration = "head"
  return config_lib.finalize(c, arg)
