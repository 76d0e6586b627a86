"""Coupling flow matching for 2x super-resolution of the embedded photographs: the flow starts
from the upsampled low-resolution image instead of noise ("Boosting Latent Diffusion with Flow
Matching", arXiv 2312.07360, code CompVis/fm-boosting; here in pixel space).

Command:
  python train.py --config=configs/photos_coupling_x2.py --workdir=workdirs/photos_coupling_x2
  python eval.py --workdir=workdirs/photos_coupling_x2 --mode=sr_metrics --steps=1,2,4
Data: as `sr_x4_photos.py` (HR 32x32 crops of the `photos` dataset, held out by photograph) with
a factor of 2: LR 16x16, its bicubic upsampling is both the flow's start x0
(`objective.source='cond_image'`) and context channels concatenated to x_t.
Hardware: 2 CPU cores; the budget of `sr_x4_photos.py` (3,000 steps at batch 32, about 15
minutes of CPU time).
Settings: a deterministic start (`source_noise_step=0`: x0 is the upsampled LR itself, so an
untrained model returns bicubic and training learns the residual); `--config.objective.
source_noise_step=400` noises it by the DDPM forward process as fm-boosting does in latent space.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos")()
  c.unlock()
  c.data.low_res_factor = 2
  c.objective.update(source="cond_image", source_noise_step=0)
  return config_lib.finalize(c, arg)
