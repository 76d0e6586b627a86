"""`photos_large`: crops of 37 openly licensed photographs from Debian packages, or of a user's folder.

The `photos` dataset has a dozen small photographs (4.8 megapixels), too few for a
super-resolution model to learn a general upsampler. Debian and Ubuntu ship wallpaper packages
that hold real photographs under open licences; `PACKAGED` is the allow-list of the 37 that are
photographs (the packages also hold drawings and abstract art, left out), 210 megapixels:

  * `lomiri-wallpapers-16.04`, `lomiri-wallpapers-20.04`: 14 photographs in /usr/share/backgrounds/
    (CC-BY-4.0, CC-BY-SA-3.0/4.0, CC0-1.0, per file in /usr/share/doc/<package>/copyright);
  * `mate-backgrounds`: the 12 files of /usr/share/backgrounds/mate/nature/ (GPL-2+);
  * `plasma-workspace-wallpapers`: 11 photographs, `<Name>/contents/images/2560x1600.jpg` (LGPL-3,
    authors in each wallpaper's metadata.json).

`python -m shortcut_jax.data.prepare --dataset photos_large` installs the packages with apt-get
(as root, or through sudo) and builds the dataset; `--photos_dir DIR` (`data.folder`) takes any
folder of the user's photographs instead (`DIR/train/` and `DIR/test/` when the user holds out
photographs themselves, else every `HELD_OUT_EVERY`-th photograph by sorted name is held out).

Construction (deterministic): each photograph is read as RGB (the one grey photograph is repeated
to three channels), shrunk by `DOWNSCALE` with PIL's antialiased bicubic filter (a wallpaper's
JPEG noise and demosaicking blur sit at its finest scale; shrinking by 2 leaves real detail there),
then cut into `CROP_SIZE`² crops on the grid of `tiling.tile_positions` (at least `OVERLAP` pixels
of overlap), dropping almost flat crops (bokeh, sky) as `photos` does. The split is by photograph:
no held-out crop shares pixels with a training crop. Authors and licences of the packaged
photographs are in the dataset's metadata (`builder.info.metadata['photos']`) and in each example.
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from shortcut_jax import storage
from shortcut_jax.data import errors
from shortcut_jax.data import images
from shortcut_jax.data.builders import base
from shortcut_jax.data.builders import photos

CROP_SIZE = photos.CROP_SIZE
OVERLAP = 16
DOWNSCALE = 2
# A user folder without train/ and test/: every HELD_OUT_EVERY-th photograph goes to 'test'.
HELD_OUT_EVERY = 6
PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds",
            "plasma-workspace-wallpapers")


@dataclasses.dataclass(frozen=True)
class Photo:
  """One packaged photograph: its name in the dataset, file, package, author and licence."""
  name: str
  path: str
  package: str
  author: str
  licence: str


def _lomiri(file: str, release: str, author: str, licence: str) -> Photo:
  return Photo(file.split("_by_")[0], f"/usr/share/backgrounds/{file}.jpg",
               f"lomiri-wallpapers-{release}", author, licence)


def _mate(name: str, author: str) -> Photo:
  return Photo(name, f"/usr/share/backgrounds/mate/nature/{name}.jpg", "mate-backgrounds", author,
               "GPL-2+")


def _plasma(name: str, author: str) -> Photo:
  return Photo(name, f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg",
               "plasma-workspace-wallpapers", author, "LGPL-3")


PACKAGED = (
    _lomiri("Bridge_by_Sander_Klootwijk", "16.04", "Sander Klootwijk", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly_by_Bolly", "16.04", "Bolly", "CC-BY-SA-4.0"),
    _lomiri("Picture_0B_by_freespace", "16.04", "Trevor 'Freespace'", "CC-BY-4.0"),
    _lomiri("Picture_1A_by_freespace", "16.04", "Trevor 'Freespace'", "CC-BY-4.0"),
    _lomiri("Wine_by_Jakkub_Mede", "16.04", "Jakub Mede", "CC-BY-4.0"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi", "16.04", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("free_by_Peter_Nerlich", "16.04", "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("friends_by_Aitzol_Berasategi", "16.04", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("greentock_by_Peter_Nerlich", "16.04", "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("life_by_Aitzol_Berasategi", "16.04", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi", "16.04", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("seeding_by_Clements_Engelhardt", "16.04", "Clemens Engelhardt", "CC0-1.0"),
    _lomiri("sunset_by_Aitzol_Berasategi", "16.04", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus", "20.04", "Lukas Baubkus", "CC-BY-SA-3.0"),
    _mate("Aqua", "Charles Barbin"),
    _mate("Blinds", "Lennart Poettering, Andrea Cimitan"),
    _mate("Dune", "Marco Cogoni, Hylke Bons"),
    _mate("FreshFlower", "Jens Ansorg"),
    _mate("Garden", "Charles Barbin"),
    _mate("GreenMeadow", "Timothy Schellhase, Lapo Calamandrei"),
    _mate("LadyBird", "Charles Barbin"),
    _mate("RainDrops", "blackcombwhistler07"),
    _mate("Storm", "Sergey Nazarov"),
    _mate("TwoWings", "Charles Barbin, Hylke Bons"),
    _mate("Wood", "Jean-François Fortin Tam"),
    _mate("YellowFlower", "Charles Barbin"),
    _plasma("BytheWater", "Maciej Wiklo"),
    _plasma("ColdRipple", "Risto Saukonpää"),
    _plasma("ColorfulCups", "Dmitri Popov"),
    _plasma("DarkestHour", "Risto Saukonpää"),
    _plasma("EveningGlow", "Ian Hex"),
    _plasma("FallenLeaf", "Martin Klapetek"),
    _plasma("Grey", "Sigi Sagi"),
    _plasma("Kite", "Risto Saukonpää"),
    _plasma("OneStandsOut", "Risto Saukonpää"),
    _plasma("Path", "Risto Saukonpää"),
    _plasma("summer_1am", "Risto Saukonpää"),
)
# Held out: architecture with long straight edges, an interior with objects, a mountain
# landscape, a macro of plants, a regular man-made pattern, a harbour scene with fine detail;
# one from each package at least, unlike each other.
TEST_PHOTOS = ("Bridge", "Wine", "picosdeeuropa", "LadyBird", "ColorfulCups", "EveningGlow")


@dataclasses.dataclass(eq=False)
class PhotosLargeConfig(tfds.core.BuilderConfig):
  """Where the photographs come from: `PACKAGED` (folder '') or a user's folder."""
  folder: str = ""
  # ((name, path, author, licence, split), ...) resolved by `make_builder`.
  items: Tuple[Tuple[str, str, str, str, str], ...] = dataclasses.field(default=(), repr=False)


def missing_packaged() -> List[Photo]:
  """The packaged photographs whose files are not on this machine."""
  return [p for p in PACKAGED if not os.path.isfile(p.path)]


def install_packages() -> None:
  """Installs `PACKAGES` with apt-get (as root, else through sudo).

  Raises:
    errors.DataNotPreparedError: no apt-get here, no root and no sudo, or apt-get failed; the
      message says what to do instead.
  """
  apt = shutil.which("apt-get")
  if apt is None:
    raise errors.DataNotPreparedError(_missing_message("apt-get is not available here"))
  command = [apt, "install", "-y", "--no-install-recommends", *PACKAGES]
  if os.geteuid() != 0:
    if shutil.which("sudo") is None:
      raise errors.DataNotPreparedError(_missing_message("installing needs root (or sudo)"))
    command = ["sudo", "-n", *command]
  logging.info("installing %s", " ".join(PACKAGES))
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    if "Unable to locate package" in done.stderr:
      # A fresh container has no package lists yet.
      update = command[:command.index(apt) + 1] + ["update"]
      subprocess.run(update, capture_output=True, text=True, check=False)
      done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
      raise errors.DataNotPreparedError(_missing_message(
          f"`{' '.join(command)}` failed:\n{done.stderr.strip()[-2000:]}"))


def _missing_message(reason: str) -> str:
  missing = missing_packaged()
  return (f"photos_large needs {len(missing)} photographs that are not installed (e.g. "
          f"{missing[0].path if missing else '?'}), and {reason}.\n"
          f"Install the Debian/Ubuntu packages {' '.join(PACKAGES)} (apt-get install), or build "
          "the dataset from your own photographs:\n"
          "  python -m shortcut_jax.data.prepare --dataset photos_large --photos_dir DIR\n"
          "(DIR: photographs of at least 256x256 pixels; DIR/train and DIR/test to choose the "
          "held-out ones yourself; train with --config.data.folder=DIR).")


def _folder_items(folder: str) -> Tuple[Tuple[str, str, str, str, str], ...]:
  """The photographs of a user folder with their split (train/ and test/, else every 6th)."""
  split_dirs = images.split_dirs(folder)
  found = []
  if split_dirs:
    for split, sub in sorted(split_dirs.items()):
      for rel in images.list_images(storage.join(folder, sub)):
        found.append((f"{sub}/{rel}", storage.join(folder, sub, rel), split))
  else:
    for i, rel in enumerate(images.list_images(folder)):
      held_out = i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
      found.append((rel, storage.join(folder, rel), "test" if held_out else "train"))
  return tuple((name, path, "", "", split) for name, path, split in found)


def load(path: str) -> np.ndarray:
  """A photograph as uint8 RGB, shrunk by `DOWNSCALE` (antialiased bicubic)."""
  with storage.open(path, "rb") as fh:
    image = Image.open(fh)
    image.load()
  image = image.convert("RGB")
  width, height = image.size
  size = (max(1, round(width / DOWNSCALE)), max(1, round(height / DOWNSCALE)))
  return np.asarray(image.resize(size, Image.BICUBIC), np.uint8)


class PhotosLarge(base.OfflineBuilder, skip_registration=True):
  """Crops of large photographs, 128×128×3 uint8 (module docstring).

  Features: 'image' (PNG), 'label' (always 0), 'photo', 'author', 'licence'. Keys
  '<photo>/<y>_<x>' (the crop's corner in the shrunk photograph). Splits: 'train', 'test'.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Photographs shrunk by 2, 128x128 crops, overlap >= 16, by photo."}

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    credits = {name: {"author": author, "licence": licence, "split": split, "file": path}
               for name, path, author, licence, split in c.items}
    return self.dataset_info_from_configs(
        description=(f"{CROP_SIZE}x{CROP_SIZE} crops of photographs shrunk by {DOWNSCALE}, "
                     f"split by photograph; source: {c.folder or 'Debian wallpaper packages'}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(CROP_SIZE, CROP_SIZE, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=1),
            "photo": tfds.features.Text(),
            "author": tfds.features.Text(),
            "licence": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(photos=credits),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The photographs are files on this machine.
    splits: Dict[str, list] = {}
    for item in self.builder_config.items:
      splits.setdefault(item[-1], []).append(item)
    return {split: self._generate_examples(items) for split, items in sorted(splits.items())}

  def _generate_examples(self, items):
    for name, path, author, licence, _ in items:
      try:
        image = load(path)
      except (OSError, ValueError) as e:
        logging.warning("photos_large: skipping %s (%s)", path, e)
        continue
      if min(image.shape[:2]) < CROP_SIZE:
        logging.warning("photos_large: skipping %s: smaller than %d px after shrinking by %d",
                        path, CROP_SIZE, DOWNSCALE)
        continue
      count = 0
      for (y, x), crop in photos.crops(image, stride=CROP_SIZE - OVERLAP):
        count += 1
        yield f"{name}/{y}_{x}", {"image": crop, "label": 0, "photo": name, "author": author,
                                  "licence": licence}
      logging.info("photos_large: %d crops of %s (%dx%d)", count, name, *image.shape[:2])


def make_builder(folder: Optional[str], data_dir: Optional[str]) -> PhotosLarge:
  """The (maybe unprepared) builder of the packaged photographs (`folder` None) or of a folder.

  Raises:
    DataNotPreparedError (a FileNotFoundError): `folder` is not a directory, holds no images, or
      gives an empty split (no held-out or no training photograph).
  """
  if folder:
    folder = storage.absolute(os.path.expanduser(folder))
    if not storage.isdir(folder):
      raise errors.DataNotPreparedError(
          f"data.folder (--photos_dir): {folder} is not a directory")
    items = _folder_items(folder)
    if not items:
      raise errors.DataNotPreparedError(f"data.folder (--photos_dir): {folder} holds no image files")
    splits = {item[-1] for item in items}
    if splits != {"train", "test"}:
      raise errors.DataNotPreparedError(f"data.folder (--photos_dir): {folder} gives no "
                       f"{'test' if 'train' in splits else 'train'} photograph (it needs at "
                       f"least {HELD_OUT_EVERY} photographs, or train/ and test/ sub-folders)")
    digest = hashlib.sha256(repr(items).encode())
    for _, path, *_ in items:
      digest.update(f"|{storage.size(path)}".encode())
    slug = "".join(ch if ch.isalnum() else "_" for ch in storage.basename(folder))[:40]
    name = f"folder_{slug}_{digest.hexdigest()[:12]}"
  else:
    items = tuple((p.name, p.path, p.author, p.licence,
                   "test" if p.name in TEST_PHOTOS else "train") for p in PACKAGED)
    name = "packaged"
  config = PhotosLargeConfig(name=name, description=f"photos from {folder or 'packages'}",
                             folder=folder or "", items=items)
  return base.make_builder(PhotosLarge, data_dir, config=config)


def require_photos(folder: Optional[str]) -> None:
  """Raises `DataNotPreparedError` (saying what to install) when packaged photographs are absent."""
  if not folder and missing_packaged():
    raise errors.DataNotPreparedError(_missing_message(
        "the dataset is not built yet; `python -m shortcut_jax.data.prepare --dataset "
        "photos_large` installs them where apt-get is available"))
