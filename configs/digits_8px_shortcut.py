"""The first stage of the digits cascade: a shortcut model at the dataset's native 8x8.

Command:
  python train.py --config=configs/digits_8px_shortcut.py --workdir=workdirs/digits_8px
  python train.py --config=configs/digits_upscale_x2.py --workdir=workdirs/digits_up_x2
  python eval.py --mode=cascade --workdirs=workdirs/digits_8px,workdirs/digits_up_x2 \
      --steps=1,1 --num_samples=1000 --output_dir=workdirs/digits_cascade
Hardware: 2 CPU cores; the network of `digits_shortcut.py` with patch 2 (16 tokens of the 8x8
image), for 2,000 steps at batch 64: the budget the default had when the cascade was measured
(docs/results.md).
Data: the embedded digits (stored at 16x16) resized to 8x8, i.e. about the 8x8 originals.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.data.image_size = 8
  c.model.patch_size = 2
  c.max_steps = 2_000
  c.eval_every = 1_000
  return config_lib.finalize(c, arg)
