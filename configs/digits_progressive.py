"""Progressive distillation on the embedded digits: the network, data and optimizer of
`digits_shortcut.py`, the student started from the flow-matching run `digits_naive.py`.

Commands (the teacher first: its run is the naive baseline's, about 10 minutes):
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
  python train.py --config=configs/digits_progressive.py --workdir=workdirs/digits_progressive
Smoke run (seconds): `configs/digits_naive.py:smoke` into workdirs/smoke_naive, then
`configs/digits_progressive.py:smoke` (its teacher is workdirs/smoke_naive).
Schedule: 2,000 steps at batch 64 (the default's budget) in log2(128) = 7 phases of about 285
steps, from 64-step to 1-step sampling; the teacher is refreshed from the student's EMA at each
phase boundary. A step costs about 1.6 naive steps (1.5 shortcut steps: two teacher passes
per sample), so the run takes about 20 minutes on the default's 2 cores;
`--config.max_steps=1400` gives the default's compute instead (the phases follow).
Result: a 1-step sampler (the last phase); it is poor at other step counts by construction.
FD-digits and class accuracy via `python eval.py --mode=digits_metrics ...`.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.objective.name = "progressive"
  c.objective.teacher_workdir = ("workdirs/smoke_naive" if arg == "smoke"
                                 else "workdirs/digits_naive")
  return config_lib.finalize(c, arg)
