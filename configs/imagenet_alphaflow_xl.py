"""ImageNet 256, DiT-XL/2 trained with α-Flow, the paper's XL/2 settings.

Command (after preparing the data, see docs/training.md):
  python train.py --config=configs/imagenet_alphaflow_xl.py --workdir=gs://.../imagenet_alphaflow_xl
  python eval.py --workdir=W --mode=fid --steps=1,2 --cfg_scale=1 --num_samples=50000 \
      --fid_stats=...
Not run at this scale here (no accelerator; the tests exercise only its `:smoke` stand-in): the
numbers are the paper's (arXiv 2510.20771, Table 1), not this library's: FID-50k 2.95 at 1 step,
2.34 at 2 (240 epochs). Settings (paper Table 3 and its experiment file, ONESTEP_METHODS.md):
batch 256, 1.2M steps, Adam (0.9, 0.95), lr 1e-4 constant, no weight decay, gradients clipped
at 16, EMA half-life 6,931 steps (rate 0.9999); the curriculum between steps 600k and 1M;
half the rows at d = 0; guidance in the target ω = 0.2, κ = 0.92 on the paper's τ in [0, 0.75]
(t in [0.25, 1] here, noise at 0), so samples are drawn at cfg 1; target clip 4. Differences:
its 2-step results use consistency sampling (re-noising); this library samples by
average-velocity jumps.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "imagenet_dit_xl")()
  c.unlock()
  c.max_steps = 1_200_000
  c.objective.update(name="alphaflow", meanflow_time_mu=-0.4, meanflow_time_sigma=1.0,
                     meanflow_equal_share=0.5, alphaflow_start=600_000, alphaflow_end=1_000_000,
                     alphaflow_clamp=4.0, alphaflow_cfg_omega=0.2, alphaflow_cfg_kappa=0.92,
                     alphaflow_cfg_t_min=0.25, alphaflow_cfg_t_max=1.0, bootstrap_cfg=False)
  c.optim.update(lr=1e-4, b2=0.95, weight_decay=0.0, grad_clip_norm=16.0, ema_rate=0.9999)
  c.evals.samples.cfg_scale = 1.0
  c.evals.fid.update(protocol="guided", steps=(1, 2), cfg_scale=1.0)
  return config_lib.finalize(c, arg)
