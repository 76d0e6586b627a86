"""ImageNet 256: the public SiT-XL/2 flow model (Ma et al. 2024) fine-tuned into a shortcut model.

Commands (docs/training.md, "Fine-tuning a flow model into a one-step model"):
  # SiT-XL-2-256x256.pt from github.com/willisma/SiT (its README links the file); the SD VAE as
  # for `imagenet_dit_b.py` (docs/training.md step 1).
  python -m shortcut_jax.tools.import_pytorch_dit --checkpoint=SiT-XL-2-256x256.pt \
      --source=sit --config=configs/imagenet_shortcut_from_sit_xl.py --workdir=workdirs/sit_xl_2
  python train.py --config=configs/imagenet_shortcut_from_sit_xl.py \
      --workdir=gs://.../imagenet_shortcut_from_sit_xl
The network is `imagenet_dit_xl.py`'s with SiT's 1/sqrt(head_dim) attention
(`model.attention_scale='sqrt'`); the run starts from the imported EMA weights
(`init.workdir`), whose step-size embedder adds nothing until trained, so its first prediction
is SiT's velocity. Everything else (objective, optimizer, batch, FID protocol) is
`imagenet_dit_xl.py`'s; how many steps the fine-tuning needs at this scale is not known.
Not run at this scale here (no accelerator); the converter is tested against a torch SiT of the
official block structure (tests/test_import_pytorch_dit.py), and the fine-tuning on the digits
(docs/results.md).
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "imagenet_dit_xl")()
  c.unlock()
  c.model.attention_scale = "sqrt"
  c.init.workdir = "workdirs/sit_xl_2"
  return config_lib.finalize(c, arg)
