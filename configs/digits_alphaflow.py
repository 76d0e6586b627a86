"""α-Flow on the embedded digits: the network, data and budget of `digits_shortcut.py`, the
curriculum from trajectory flow matching (α = 1) to MeanFlow (α = 0) over the whole run.

Command:
  python train.py --config=configs/digits_alphaflow.py --workdir=workdirs/digits_alphaflow
  python eval.py --workdir=workdirs/digits_alphaflow --mode=digits_metrics --steps=1,2,4,8 \
      --num_samples=1000 --cfg_scale=1
The guidance is in the target (the paper's B/2-cfg recipe: ω = 1, κ = 1/3 here, an effective
scale ω / (1 - κ) = 1.5, the other digits runs' CFG), so samples are drawn at cfg 1 (one call).
A quarter of the rows at d = 0 (its B/2 `ratio_fm`). Hardware: 2 CPU cores; a step costs about
a flow-matching step plus one no-grad forward (α > 0) or one no-grad jvp (α = 0), and the
guidance's no-grad call on twice the batch. Results: docs/results.md.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_meanflow")()
  c.unlock()
  c.objective.update(name="alphaflow", meanflow_equal_share=0.25, alphaflow_start=0,
                     alphaflow_cfg_omega=1.0, alphaflow_cfg_kappa=1.0 / 3.0)
  c.evals.samples.cfg_scale = 1.0
  return config_lib.finalize(c, arg)
