"""One-step 4x super-resolution of the photographs that ship with scikit-image and scikit-learn.

The fully offline SR config (nothing to install); `sr_x4_photos_large.py`, on 37 photographs
from Debian packages, is the SR default.

Command:
  python train.py --config=configs/sr_x4_photos.py --workdir=workdirs/sr_x4_photos
  python eval.py --workdir=workdirs/sr_x4_photos --mode=sr_metrics --steps=1,2,4,8
  python eval.py --workdir=workdirs/sr_x4_photos --mode=super_resolve --steps=1 \
      --input_dir=my_photos --output_dir=workdirs/sr_x4_photos/sr
Data: the `photos` dataset (crops of the photographs scikit-image and scikit-learn ship, held-out
split by photograph); HR = random 32x32 crops (flipped), LR = 8x8 antialiased downsample, the
model's condition its bicubic upsampling (`data.low_res_factor=4`), concatenated to x_t as input
channels (`model.cond_image_mode='concat'`).
Hardware: 2 CPU cores; 14 minutes of CPU time (3,000 steps; 3 steps/s when the machine is
otherwise idle). Result (docs/results.md): at this budget the samples stay below bicubic on the
held-out photographs (1 step: 23.5 dB / SSIM 0.46 against bicubic's 28.2 / 0.65; the MSE
regressor of the same size only ties bicubic).
Settings: pixel space, a small DiT (hidden 128, depth 4, patch 4 on 32x32x3: 64 tokens; patch 2
is 8x slower on this CPU), unconditional
(cfg_scale 0, as the super-resolution project), EMA 0.99 for a short run (as the digits default).
Baselines on the same network and data: `--config.objective.name=naive` (flow matching) and
`--config.objective.name=regression` (a deterministic one-pass regressor; evaluate it with
`--steps=1`).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 32
  c.max_steps = 3_000
  c.log_every = 50
  c.eval_every = 1_500
  c.model.update(patch_size=4, hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0,
                 dtype="float32", cond_image_mode="concat")
  c.objective.update(name="shortcut", denoise_timesteps=128, bootstrap_every=8, cfg_scale=0.0,
                     class_dropout_prob=0.0, image_dropout_prob=0.0)
  c.optim.update(lr=1e-3, warmup_steps=100, schedule="constant", weight_decay=0.1, ema_rate=0.99)
  c.data.update(name="photos", image_size=32, num_classes=1, low_res_factor=4)
  c.checkpoint.every_steps = 500
  # cfg 1: conditioned on the LR input, no guidance (0 would be the null condition).
  c.evals.samples.update(steps=(1, 2, 4, 8, 128), num_images=16, cfg_scale=1.0)
  c.evals.loss_per_t.update(num_batches=1, num_bins=8)
  c.evals.validation.update(num_batches=2)
  return config_lib.finalize(c, arg)
