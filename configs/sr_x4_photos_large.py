"""The super-resolution default: one-step 4x super-resolution of photographs, on the larger photo set.

Command (Debian/Ubuntu; the prepare step installs the wallpaper packages with apt-get):
  python -m shortcut_jax.data.prepare --dataset photos_large      # or --photos_dir=MY_PHOTOS
  python train.py --config=configs/sr_x4_photos_large.py --workdir=workdirs/sr_x4_photos_large
  python eval.py --workdir=workdirs/sr_x4_photos_large --mode=sr_metrics --steps=1,2,4,8
  python eval.py --workdir=workdirs/sr_x4_photos_large --mode=super_resolve --steps=1 \
      --input_dir=my_photos --output_dir=workdirs/sr_x4_photos_large/sr
Data: `photos_large` (37 photographs from Debian wallpaper packages, shrunk by 2, 128x128 crops;
six photographs held out; `--config.data.folder=DIR` for the user's own); HR = random 32x32
crops (flipped), LR = 8x8 antialiased bicubic downsample, whose bicubic upsampling is both the
flow's start (a coupling flow, `objective.source='cond_image'`) and context channels.
Settings: the network, objective and optimiser of `sr_x4_photos.py` (DiT hidden 128, depth 4,
patch 4; shortcut objective, EMA 0.99), with the coupling source, 4,000 steps, a cosine
learning-rate decay, and half the flow rows training the one-step level at t = 0 on the flow
target (`objective.top_level_share=0.5`: exact for a flow out of one point, see
`shortcut_jax/objectives/top_level_anchor.py`).
Hardware: 2 CPU cores; 23-34 minutes of training with other runs sharing the cores (not timed
alone; the step costs what the previous default's did, which trained in 20.5 minutes alone).
Result (docs/results.md, "The larger photo set"): on the six held-out photographs the 1-step
model beats bicubic: 37.17 +- 0.02 dB over three seeds against bicubic's 36.48 (+0.69), SSIM
0.847 against 0.830, HaarPSI 0.907 against 0.882.
More steps are sharper and lower on PSNR (the perception-distortion trade-off).
Baselines on the same data: `--config.objective.top_level_share=0 --config.optim.schedule=constant`
(the previous default: below bicubic on PSNR), with `--config.objective.source=gaussian` too (the
noise-source shortcut model), and `sr_x4_photos_large_regression.py` (the residual MSE regressor).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos")()
  c.unlock()
  c.max_steps = 4_000
  c.eval_every = 2_000
  c.data.name = "photos_large"
  # The one-step level anchored to the flow target on half the flow rows (exact for this point
  # source: `objectives/top_level_anchor.py`), and a cosine learning-rate decay.
  c.objective.update(source="cond_image", source_noise_step=0, top_level_share=0.5)
  c.optim.schedule = "cosine"
  return config_lib.finalize(c, arg)
