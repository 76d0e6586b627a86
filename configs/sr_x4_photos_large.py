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
patch 4; shortcut objective, EMA 0.99), with the coupling source and 4,000 steps.
Hardware: 2 CPU cores, about 20 minutes of training alone (30 when two runs share the cores).
Result (docs/results.md, "The larger photo set"): on the six held-out photographs the 1-step
model does not beat bicubic on PSNR: 35.99 +- 0.43 dB over three seeds, against 36.48 dB. It is
level on SSIM and above on HaarPSI. It gains on detailed crops and loses on flat ones. The MSE
regressor below, with a cosine decay (`--config.optim.schedule=cosine`), is +0.46 dB.
Baselines on the same data: `--config.objective.source=gaussian` (the noise-source shortcut model),
`--config.objective.name=regression --config.objective.source=gaussian` (the MSE regressor).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos")()
  c.unlock()
  c.max_steps = 4_000
  c.eval_every = 2_000
  c.data.name = "photos_large"
  c.objective.update(source="cond_image", source_noise_step=0)
  return config_lib.finalize(c, arg)
