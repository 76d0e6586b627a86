"""ImageNet 256, DiT-XL/2, class-conditional shortcut model with CFG bootstrap targets.

Command (after preparing the data, see docs/training.md):
  python train.py --config=configs/imagenet_dit_xl.py --workdir=gs://.../imagenet_dit_xl
Hardware: a TPU v3-128 pod slice / 8 nodes of 8 GPUs; 810k steps at batch 256.
Not run at this scale here (no accelerator; the tests exercise only its `:smoke` stand-in):
the numbers below are the paper's, not this library's.
Result reported by the paper (FID-50k): 3.8 at 128 steps, 7.8 at 4 steps, 10.6 at 1 step,
under the original's FID protocol (`evals.fid.protocol='original'`, as `imagenet_dit_b.py`:
1, 4, 32, 128 steps at cfg 1, one entry at cfg 1.5 with 128 steps, online weights).
Everything but the model size is `imagenet_dit_b.py` (see its note on latent space).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "imagenet_dit_b")()
  c.unlock()
  c.model.update(hidden_size=1152, depth=28, num_heads=16)
  return config_lib.finalize(c, arg)
