"""CelebA-HQ 256, DiT-B/2, unconditional shortcut model (the paper's CelebA run).

Command (after preparing the data, see docs/training.md):
  python train.py --config=configs/celebahq_dit_b.py --workdir=gs://.../celebahq_dit_b
Hardware: a TPU v3-8 / 8 GPUs; 410k steps at batch 64 (the original README's settings).
Result reported by the paper (FID-50k): 6.9 at 128 steps, 13.8 at 4 steps, 20.5 at 1 step.
Latent space: the paper's runs train on SD-VAE latents (32x32x4 from 256x256 images), where
patch 2 gives 256 tokens. Latent datasets and the VAE come with the latent-space release; on
pixels, use `--config.model.patch_size=8` (1,024 tokens) — not the paper's setting.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.batch_size = 64
  c.max_steps = 410_000
  c.log_every = 1_000
  c.eval_every = 20_000
  c.model.update(patch_size=2, hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0)
  # Unconditional: one class and every label dropped; cfg_scale 0 trains on the null label.
  c.objective.update(name="shortcut", cfg_scale=0.0, class_dropout_prob=1.0, bootstrap_cfg=False)
  c.data.update(name="celebahq256", image_size=256, num_classes=1)
  c.checkpoint.every_steps = 20_000
  c.evals.samples.cfg_scale = 0.0
  return config_lib.finalize(c, arg)
