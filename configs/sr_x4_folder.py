"""4x super-resolution trained on a folder of your own photographs, with held-out ones.

Command:
  python train.py --config=configs/sr_x4_folder.py --workdir=workdirs/sr_x4_folder \
      --config.data.folder=MY_PHOTOS
  python eval.py --workdir=workdirs/sr_x4_folder --mode=sr_metrics --steps=1,2,4,8
Data: `photos_large` built from `data.folder`: `MY_PHOTOS/train/` and `MY_PHOTOS/test/` (the
held-out photographs), or one folder of which every 6th photograph is held out; each photograph is
shrunk by 2 and cut into 128x128 crops (`shortcut_jax/data/builders/photos_large.py`). The
folder may be a bucket (gs://...).
Settings and hardware: those of `sr_x4_photos_large.py`.
"""

from shortcut_jax import config as config_lib

# Not a folder: training stops with an error naming data.folder until the flag sets it.
UNSET = "<set --config.data.folder=MY_PHOTOS>"


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "sr_x4_photos_large")()
  c.unlock()
  c.data.folder = UNSET
  return config_lib.finalize(c, arg)
