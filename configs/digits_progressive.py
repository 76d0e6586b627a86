"""Progressive distillation on the embedded digits: the network, data and optimizer of
`digits_shortcut.py`, the student started from the flow-matching run `digits_naive.py`.

Commands (the teacher first: its run is the naive baseline's, about 7.5 minutes):
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
  python train.py --config=configs/digits_progressive.py --workdir=workdirs/digits_progressive
Smoke run (seconds): `configs/digits_naive.py:smoke` into workdirs/smoke_naive, then
`configs/digits_progressive.py:smoke` (its teacher is workdirs/smoke_naive).
Schedule: the default's steps at batch 64 in log2(128) = 7 phases (of about 285 at 2,000
steps), from 64-step to 1-step sampling; the teacher is refreshed from the student's EMA at each
phase boundary. A step costs about 1.6 naive steps (1.5 shortcut steps: two teacher passes
per sample), so the run takes about 20 minutes on the default's 2 cores;
`--config.max_steps=1400` gives the default's compute instead (the phases follow).
Result: a 1-step sampler (the last phase); it is poor at other step counts by construction.
FD-digits and class accuracy via `python eval.py --mode=digits_metrics ...`.
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.name = "progressive"
  c.objective.teacher_workdir = ("workdirs/smoke_naive" if arg == "smoke"
                                 else "workdirs/digits_naive")
  return config_lib.finalize(c, arg)
