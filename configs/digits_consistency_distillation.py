"""Consistency distillation on the embedded digits: the network, data and optimizer of
`digits_shortcut.py`, the student started from the flow-matching run `digits_naive.py`.

Commands (the teacher first: its run is the naive baseline's, about 7.5 minutes):
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
  python train.py --config=configs/digits_consistency_distillation.py \\
      --workdir=workdirs/digits_consistency_distillation
Smoke run (seconds): `configs/digits_naive.py:smoke` into workdirs/smoke_naive, then this
file with `:smoke` (its teacher is workdirs/smoke_naive).
Budget: the default's steps at batch 64; a step costs about 1.55 naive steps (1.4
shortcut steps: one teacher and one target-network pass per sample), 19 minutes (measured) on the
default's 2 cores (`--config.max_steps=1400` for the default's compute). The target network
is the student's EMA (rate 0.99, the default's); the teacher's Euler step is 1/128.
Result: 1-step samples f(x0, 0); Euler sampling for more steps, as the original evaluates it.
FD-digits and class accuracy via `python eval.py --mode=digits_metrics ...`; at this budget
(docs/results.md) 26.59 at 1 step (its teacher's 27.95: the jump is not learnt yet), 6.99 at 8,
5.54 at 128.
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  # `digits_progressive.py` (the same student, teacher and budget) with the other objective.
  c = config_lib.load_sibling_config(__file__, "digits_progressive")(arg)
  c.unlock()
  c.objective.name = "consistency-distillation"
  c.lock()
  return c
