"""Live reflow on the embedded digits: the network, data, optimizer and budget of
`digits_shortcut.py`.

Command:
  python train.py --config=configs/digits_livereflow.py --workdir=workdirs/digits_livereflow
Budget: the default's steps at batch 64, from scratch; 1/8 of each batch (8 rows) gets
reflow targets from an 8-step guided Euler rollout of the model itself (16 forward passes of 8
rows per step), the rest flow-matching targets: a step costs about 1.3 naive steps (1.2
shortcut steps), 16–20 minutes on the default's 2 cores (19.6 measured, 2026-12-02, light
tests beside it).
Result: 1 … 64-step samples with the reflowed velocity (level 0), 128 steps with the flow
(level 7), as the original samples it. FD-digits and class accuracy via
`python eval.py --mode=digits_metrics ...`; at this budget (docs/results.md) 50.87 at 1 step,
25.46 at 8 (level 0 trained on 1/8 of the batch), 7.28 at 128.
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.name = "livereflow"
  return config_lib.finalize(c, arg)
