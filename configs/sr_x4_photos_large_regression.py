"""One-step 4x super-resolution by residual regression, on the larger photo set: the recipe that
beats bicubic on PSNR.

The network, data and budget of the SR default (`sr_x4_photos_large.py`), trained with MSE
instead of a flow: it starts from the bicubic upsampling of the LR input and regresses the
residual HR - bicubic (`objective.name='regression'`, `objective.source='cond_image'`; residual
learning as in VDSR), with a cosine learning-rate decay. Deterministic: one network pass per
image, no sampling (evaluate with `--steps=1`).
Command (Debian/Ubuntu; the prepare step installs the wallpaper packages with apt-get):
  python -m shortcut_jax.data.prepare --dataset photos_large
  python train.py --config=configs/sr_x4_photos_large_regression.py --workdir=W
  python eval.py --workdir=W --mode=sr_metrics --steps=1
Hardware: 2 CPU cores; 4,000 steps took 21.5 minutes with another training run sharing the
cores (not timed alone).
Result (docs/results.md, "The larger photo set"): on the six held-out photographs 37.40 dB /
SSIM 0.852 / HaarPSI 0.911 against bicubic's 36.48 / 0.830 / 0.882 (+0.92 dB, seed 0); it gains
on every fifth of the crops, flat ones included. The same regressor started from zeros (the
`sr_x4_photos_regression.py` form) gets +0.46 dB; the generative SR default, which also samples
at more steps, gets +0.69 dB in one step.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos_large")()
  c.unlock()
  c.objective.update(name="regression", source="cond_image", top_level_share=0.0)
  c.optim.schedule = "cosine"
  c.evals.samples.steps = (1,)
  c.evals.loss_per_t.every = 0  # Defined for flows (t in [0, 1]); the regressor lives at t = 0.
  return config_lib.finalize(c, arg)
