"""ImageNet 256, DiT-B/2, class-conditional shortcut model with CFG bootstrap targets.

Command (after preparing the data, see docs/training.md):
  python train.py --config=configs/imagenet_dit_b.py --workdir=gs://.../imagenet_dit_b
Hardware: a TPU v3-32 pod slice / 4 nodes of 8 GPUs; 810k steps at batch 256.
Result reported by the paper (FID-50k): 15.5 at 128 steps, 28.3 at 4 steps, 40.3 at 1 step.
Latent space and smoke as `celebahq_dit_b.py` (SD-VAE latents 32x32x4 encoded in the train
step; `:smoke` on the `photos` stand-in with a tiny random VAE).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.batch_size = 256
  c.max_steps = 810_000
  c.log_every = 1_000
  c.eval_every = 20_000
  c.model.update(patch_size=2, hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0)
  c.objective.update(name="shortcut", cfg_scale=1.5, class_dropout_prob=0.1, bootstrap_cfg=True)
  c.data.update(name="imagenet256", image_size=256, num_classes=1000, latents="online")
  c.checkpoint.every_steps = 20_000
  c.sharding = "fsdp"
  c.mesh.update(data=1, fsdp=-1)
  return config_lib.finalize(c, arg)
