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
Measured (docs/results.md, "HOMO, explained"): on today's default network and budget, FD-digits
97 at one step and 71 at eight, against 11 and 6 for the first-order shortcut model on the same
smoothstep path. The path is not the cause. The seed's self-consistency weight (0.1) starves the
large jumps: `--config.objective.homo_lambda_sc=1.0` halves FD-digits (53 / 28). The acceleration
is still learned badly at this budget (MSE 4.4 against 0.29 for the velocity).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.update(name="homo", path="smoothstep", homo_lambda_v=1.0, homo_lambda_a=0.5,
                     homo_lambda_sc=0.1)
  c.model.acceleration = "head"
  return config_lib.finalize(c, arg)
