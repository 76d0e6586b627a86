"""4x super-resolution on ImageNet 256 in latent space with DiT-XL/2, at pod scale.

Command (after preparing ImageNet and the SD VAE, see docs/training.md):
  python train.py --config=configs/sr_x4_imagenet_dit_xl.py --workdir=gs://.../sr_x4_imagenet_xl
  python eval.py --workdir=W --mode=sr_metrics --steps=1,2,4,8 --num_samples=1000
  python eval.py --workdir=W --mode=super_resolve --steps=1 --input_dir=IN --output_dir=OUT
Hardware: 8 GPUs / a TPU v3-32 slice; 500k steps at batch 32. Not run at this scale here (no
accelerator; the tests exercise only its `:smoke` stand-in): no result recorded.
Data: 256x256 HR ImageNet crops (random crop + flip), LR = 64x64 antialiased bicubic
downsample, bicubic-upsampled back and encoded with the frozen SD VAE like the HR image
(`data.latents='online'`: 32x32x4 latents of both); the LR latent is fused with the noisy latent
as tokens (`model.cond_image_mode='tokens'`: a second patch embedding plus the same position
embedding, concatenated along features and projected to the hidden size).
The objective is the first-order shortcut one; `--config.objective.name=homo` (with a curved
`objective.path`) trains the higher-order ("HOMO") variant instead. Unconditional (cfg_scale 0),
EMA 0.999.
Smoke (`:smoke`): the `photos` dataset at 32x32 and a tiny random VAE, seconds on a CPU.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.seed = 42
  c.batch_size = 32
  c.max_steps = 500_000
  c.log_every = 100
  c.eval_every = 5_000
  c.model.update(patch_size=2, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0,
                 dropout=0.1, cond_image_mode="tokens")
  c.objective.update(name="shortcut", denoise_timesteps=128, bootstrap_every=8, bootstrap_ema=True,
                     cfg_scale=0.0, class_dropout_prob=0.0, bootstrap_cfg=False)
  c.optim.update(lr=1e-4, weight_decay=0.1, warmup_steps=5_000, schedule="cosine", ema_rate=0.999)
  c.data.update(name="imagenet256", image_size=256, num_classes=1, low_res_factor=4,
                latents="online")
  c.checkpoint.every_steps = 5_000
  # cfg 1: conditioned on the LR input, no guidance (0 would be the null condition).
  c.evals.samples.update(steps=(1, 2, 4, 8, 128), num_images=16, cfg_scale=1.0)
  return config_lib.finalize(c, arg)
