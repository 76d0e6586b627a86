"""4x super-resolution on DIV2K (TFDS `div2k/bicubic_x4`, 800 training 2K photographs).

Command (prepare once: online, or `--manual_dir DIR` with the unzipped archives, see
`shortcut_jax/data/builders/div2k.py`):
  python -m shortcut_jax.data.prepare --dataset div2k [--manual_dir DIR]
  python train.py --config=configs/sr_x4_div2k.py --workdir=workdirs/sr_x4_div2k
  python eval.py --workdir=workdirs/sr_x4_div2k --mode=sr_metrics --steps=1,2,4,8
  python eval.py --workdir=workdirs/sr_x4_div2k --mode=sr_metrics --steps=1,8 \
      --input_dir=DIV2K_valid_HR      # whole validation images, border cropped by 4
Data: HR = random 64x64 crops of the 2K images (flipped); LR = their 16x16 antialiased bicubic
downsample (DIV2K's own 'lr' images are not read: training and evaluation degrade alike); the
held-out split is DIV2K's 'validation' (100 images, the central crop of each).
Settings: the coupling shortcut model of `sr_x4_photos_large.py` (its one-step level anchored,
a cosine decay) with a larger DiT (hidden 384, depth 12, patch 4: 256 tokens) and batch 64;
200k steps.
Hardware: an accelerator. Not run on this project's CPU machine: no result is claimed.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos_large")()
  c.unlock()
  c.batch_size = 64
  c.max_steps = 200_000
  c.log_every = 100
  c.eval_every = 10_000
  c.model.update(hidden_size=384, depth=12, num_heads=6)
  c.optim.update(lr=1e-4, warmup_steps=1_000, ema_rate=0.999)
  c.checkpoint.every_steps = 5_000
  c.data.update(name="div2k", image_size=64)
  return config_lib.finalize(c, arg)
