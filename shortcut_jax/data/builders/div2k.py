"""DIV2K (`data.name='div2k'`): TFDS's own `div2k/bicubic_x4`, prepared online or from local files.

The dataset is TFDS's (`tensorflow_datasets/datasets/div2k`): 800 training and 100 validation
2K photographs, features 'hr' and 'lr'. The library reads 'hr' only and makes the LR input itself
with the same antialiased bicubic as every other dataset (`data.low_res_factor`), so training and
evaluation degrade images identically (DIV2K's own 'lr' images come from MATLAB's imresize). Any
of TFDS's configs has the same 'hr' images; `CONFIG` is the one the library builds and reads.

Preparing it:
  * online: `python -m shortcut_jax.data.prepare --dataset div2k` (TFDS downloads the zips);
  * offline, from the unzipped files of https://data.vision.ee.ethz.ch/cvl/DIV2K/:
    `python -m shortcut_jax.data.prepare --dataset div2k --manual_dir DIR`, with `MANUAL_LAYOUT`
    in DIR. `Div2kFromFolder` runs TFDS's own builder on those folders instead of the download,
    so the prepared dataset is the one TFDS would have written (`tfds.builder('div2k/bicubic_x4')`
    reads it).
"""

import os
from typing import Optional

from tensorflow_datasets.datasets.div2k import div2k_dataset_builder

from shortcut_jax.data import errors
from shortcut_jax.data.builders import base

CONFIG = "bicubic_x4"
NAME = f"div2k/{CONFIG}"
# The unzipped archives DIV2K_{train,valid}_HR.zip and DIV2K_{train,valid}_LR_bicubic_X4.zip.
MANUAL_LAYOUT = {
    "train_hr_url": "DIV2K_train_HR",
    "valid_hr_url": "DIV2K_valid_HR",
    "train_lr_url": "DIV2K_train_LR_bicubic/X4",
    "valid_lr_url": "DIV2K_valid_LR_bicubic/X4",
}
MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Unzip DIV2K_train_HR.zip, DIV2K_valid_HR.zip, DIV2K_train_LR_bicubic_X4.zip and "
    "DIV2K_valid_LR_bicubic_X4.zip (https://data.vision.ee.ethz.ch/cvl/DIV2K/) into one folder:\n"
    + "".join(f"  DIR/{sub}/*.png\n" for sub in MANUAL_LAYOUT.values()))


class Div2kFromFolder(div2k_dataset_builder.Builder, skip_registration=True):
  """TFDS's DIV2K builder reading the unzipped archives from a folder instead of the URLs."""

  name = "div2k"  # The same dataset folder as TFDS's own builder.
  code_path = None  # Nothing is downloaded: no checksums file to look up (see builders.base).

  def __init__(self, *, folder: str, **kwargs):
    self._folder = folder
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are in `self._folder`.
    # TFDS's builder joins 'DIV2K_<split>_HR' to the HR download's folder itself.
    paths = {key: self._folder if key.endswith("hr_url") else os.path.join(self._folder, sub)
             for key, sub in MANUAL_LAYOUT.items()}
    original = super()._split_generators

    class _Local:
      def download_and_extract(self, urls):
        del urls
        return paths

    return original(_Local())


def check_folder(folder: str) -> None:
  """Raises `DataNotPreparedError` naming the missing folders of `MANUAL_LAYOUT`."""
  missing = [sub for sub in MANUAL_LAYOUT.values()
             if not os.path.isdir(os.path.join(folder, sub))]
  if missing:
    raise errors.DataNotPreparedError(
        f"--manual_dir {folder} lacks {missing}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def builder(data_dir: Optional[str]):
  """TFDS's DIV2K builder (`NAME`) on `data_dir` (maybe unprepared; a remote data_dir is served
  from its local cache, `builders.base`)."""
  return base.make_builder(div2k_dataset_builder.Builder, data_dir, config=CONFIG)


def prepare(data_dir: Optional[str], manual_dir: Optional[str] = None):
  """Builds DIV2K into `data_dir`: from `manual_dir` (the unzipped archives), else by TFDS's
  download. Returns the prepared builder."""
  if manual_dir:
    folder = os.path.abspath(os.path.expanduser(manual_dir))
    check_folder(folder)
    local = base.make_builder(Div2kFromFolder, data_dir, folder=folder, config=CONFIG)
  else:
    local = builder(data_dir)
  local.download_and_prepare()
  base.publish(local, data_dir)
  return builder(data_dir)


def not_prepared_message(data_dir: Optional[str]) -> str:
  where = data_dir or "the TFDS default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  online = "python -m shortcut_jax.data.prepare --dataset div2k" + (
      f" --data_dir {data_dir}" if data_dir else "")
  return (f"dataset 'div2k' ({NAME}) is not prepared in {where}. Prepare it once, online:\n"
          f"  {online}\nor from the archives you downloaded:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
          f"  {errors.prepare_command('div2k', data_dir, 'DIR')}")
