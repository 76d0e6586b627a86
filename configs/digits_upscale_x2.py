"""The second stage of the digits cascade: 2x upscaling from 8x8 to the 16x16 digits, a
one-step shortcut model on a coupling flow from the upsampled 8x8 image.

Command:
  python train.py --config=configs/digits_upscale_x2.py --workdir=workdirs/digits_up_x2
  (then the cascade with `configs/digits_8px_shortcut.py`'s generator: see its docstring)
Hardware: 2 CPU cores; the network of `digits_shortcut.py` with patch 2 (64 tokens), 2,000 steps
at batch 64: the default's network and budget when the cascade was measured (docs/results.md).
Data: the 16x16 digits (HR, whole images), LR = their antialiased 8x8 downsample; its bicubic
upsampling is both the flow's start (`objective.source='cond_image'`) and context channels.
Labels stay a condition (with CFG dropout), so the cascade passes the generator's labels on.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.data.low_res_factor = 2
  c.model.patch_size = 2
  c.max_steps = 2_000
  c.eval_every = 1_000
  c.model.cond_image_mode = "concat"
  c.objective.source = "cond_image"
  return config_lib.finalize(c, arg)
