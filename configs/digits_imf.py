"""Improved MeanFlow (iMF) on the embedded digits: the network, data and budget of
`digits_shortcut.py`, with the guidance scale and interval as network inputs.

Command:
  python train.py --config=configs/digits_imf.py --workdir=workdirs/digits_imf
  python eval.py --workdir=workdirs/digits_imf --mode=digits_metrics --steps=1,2,4,8 \
      --num_samples=1000 --cfg_scale=1.5
Hardware: 2 CPU cores; a step costs about one and a half MeanFlow steps (the no-grad call for the
guided target runs on twice the batch). The paper's settings (`objectives.imf`): MeanFlow's
time sampling with half the rows at d = 0, guidance scales log-uniform on [1, 8], intervals
t_min ~ U[0, 0.5], t_max ~ U[0.5, 1]; sampled here at cfg 1.5 on [0, 1] (`--cfg_scale`,
`--guidance_interval`). Results: docs/results.md.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_meanflow")()
  c.unlock()
  c.objective.update(name="imf", meanflow_equal_share=0.5)
  c.model.update(guidance_input=True, guidance_interval=True)
  return config_lib.finalize(c, arg)
