"""`image_folder`: any folder of images as a TFDS dataset (`data.name='image_folder'`).

Layouts (decided in this order):
  1. `folder/train/...` and `folder/test/...` (or `val/`): those are the splits; inside each,
     labels come from class sub-folders as in 2, or all images get label 0 as in 3.
  2. `folder/<class>/.../*.png`: label = index of `<class>` in the sorted class-folder names;
     every 10th image of each class (sorted by path) is held out as 'test'.
  3. Images directly in `folder` (or only in folders without class meaning): one class,
     label 0; every 10th image is held out as 'test'.

Images are converted to RGB and centre-cropped/resized to `data.image_size` with PIL's
antialiased bicubic filter when the dataset is built; unreadable files are skipped and their
number is logged in one warning. The build lands in `data_dir/image_folder/<config>/`, where
the config name carries a fingerprint of the folder path, the size and every file's name,
size and modification time: an unchanged folder is reused, a changed one is built again.

Remote folders (`data.folder=gs://bucket/images`, and `data.embeddings` there) are listed and
read through `shortcut_jax.storage` (one listing; each image is downloaded once, when the
dataset is built); their fingerprint has each file's name and size only (object listings give
no modification time a rebuild could rely on). A remote data_dir: see `catalog`.
"""

import dataclasses
import functools
import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from shortcut_jax import storage
from shortcut_jax.data import images
from shortcut_jax.data.builders import base

# Every HELD_OUT_EVERY-th image of each class (sorted by path) goes to the 'test' split.
HELD_OUT_EVERY = 10


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Which folder, at which size, with which class names (resolved by `make_builder`)."""
  folder: str = ""
  image_size: int = 0
  class_names: Tuple[str, ...] = ()
  split_dirs: Tuple[Tuple[str, str], ...] = ()  # ((split, sub-folder), ...) for layout 1.
  embeddings: str = ""  # .npz of `tools.embed_text` ('' = none): an `embedding` per image.
  embedding_dim: int = 0


def load_embeddings(path: str) -> Dict[str, "np.ndarray"]:
  """`{relative image path: float32 [D]}` from an .npz with `paths` and `embedding` [N, D]
  (as `python -m shortcut_jax.tools.embed_text` writes); read once per file version."""
  if not storage.isfile(path):
    raise FileNotFoundError(f"data.embeddings: {path} does not exist; write it with "
                            "`python -m shortcut_jax.tools.embed_text --captions=F --model=PATH "
                            f"--out={path}`")
  return _read_embeddings(path, *_version(path))


def _version(path: str) -> Tuple[int, int]:
  """(size, modification time) of a file; the time is 0 for a remote one (see the docstring)."""
  if storage.is_remote(path):
    return storage.size(path), 0
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _read_embeddings(path: str, size: int, mtime_ns: int) -> Dict[str, "np.ndarray"]:
  del size, mtime_ns  # The cache key: a rewritten file is read again.
  with storage.open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
    missing = [k for k in ("paths", "embedding") if k not in f]
    if missing:
      raise ValueError(f"data.embeddings: {path} has no {missing} (expected the arrays "
                       "'paths' [N] and 'embedding' [N, D] of tools.embed_text)")
    paths, emb = [str(p) for p in f["paths"]], np.asarray(f["embedding"], np.float32)
  if emb.ndim != 2 or emb.shape[0] != len(paths):
    raise ValueError(f"data.embeddings: {path}: 'embedding' has shape {emb.shape}, expected "
                     f"[{len(paths)}, D]")
  return {os.path.normpath(p): e for p, e in zip(paths, emb)}


def _class_names(roots: Sequence[str]) -> Tuple[str, ...]:
  names = set()
  for root in roots:
    names.update(images.folder_class_names(root) or ())
  return tuple(sorted(names))


def _fingerprint(folder: str, image_size: int) -> str:
  h = hashlib.sha256(f"{storage.absolute(folder)}|{image_size}".encode())
  if storage.is_remote(folder):
    for rel, size in storage.file_sizes(folder).items():
      if images.is_image_file(rel):
        h.update(f"|{rel}|{size}".encode())
    return h.hexdigest()[:12]
  for rel in images.list_images(folder):
    st = os.stat(os.path.join(folder, rel))
    h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
  return h.hexdigest()[:12]


def _items(root: str, class_names: Tuple[str, ...], prefix: str) -> Dict[int, List[Tuple[str, str, dict]]]:
  """Items per label under `root` (label 0 for everything when there are no classes)."""
  by_label: Dict[int, List[Tuple[str, str, dict]]] = {}
  present = images.folder_class_names(root) if class_names else None
  if class_names and present:
    top = images.list_images(root, recursive=False)
    if top:
      logging.warning("image_folder: ignoring %d images at the top of %s (labels come from its "
                      "class sub-folders)", len(top), root)
    for name in present:
      label = class_names.index(name)
      sub = storage.join(root, name)
      by_label[label] = [(f"{prefix}/{name}/{rel}", storage.join(sub, rel), {"label": label})
                         for rel in images.list_images(sub)]
  else:
    by_label[0] = [(f"{prefix}/{rel}", storage.join(root, rel), {"label": 0})
                   for rel in images.list_images(root)]
  return by_label


class ImageFolder(base.OfflineBuilder, skip_registration=True):
  """A folder of images (see the module docstring for layouts, labels and splits)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Centre crop + bicubic resize, RGB, labels from sub-folders."}

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    num_classes = max(1, len(c.class_names))
    features = {
        "image": tfds.features.Image(shape=(c.image_size, c.image_size, 3)),
        "label": tfds.features.ClassLabel(
            names=list(c.class_names) if c.class_names else None,
            num_classes=None if c.class_names else num_classes),
    }
    if c.embeddings:
      features["embedding"] = tfds.features.Tensor(shape=(c.embedding_dim,), dtype=np.float32)
    return self.dataset_info_from_configs(
        description=f"Images from {c.folder} at {c.image_size}x{c.image_size}.",
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label"),
    )

  def split_items(self) -> Dict[str, List[Tuple[str, str, dict]]]:
    """`{split: [(key, path, features), ...]}` for the folder (splits may be missing if empty)."""
    c = self.builder_config
    splits: Dict[str, List[Tuple[str, str, dict]]] = {"train": [], "test": []}
    if c.split_dirs:
      for split, sub in c.split_dirs:
        for items in _items(storage.join(c.folder, sub), c.class_names, sub).values():
          splits[split].extend(items)
    else:
      for items in _items(c.folder, c.class_names, "img").values():
        for i, item in enumerate(items):
          splits["test" if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"].append(item)
    if not splits["test"]:
      logging.warning("image_folder %s: no 'test' split (fewer than %d images per class and no "
                      "test/ folder)", c.folder, HELD_OUT_EVERY)
    return {k: v for k, v in splits.items() if v}

  def _split_generators(self, dl_manager):
    del dl_manager  # The images are read from the folder (local or remote).
    return {split: self._generate_examples(items, split)
            for split, items in self.split_items().items()}

  def _generate_examples(self, items, split):
    c = self.builder_config
    if c.embeddings:
      table = load_embeddings(c.embeddings)
      rel = lambda path: os.path.normpath(os.path.relpath(path, c.folder))
      missing = [rel(path) for _, path, _ in items if rel(path) not in table]
      if missing:
        raise ValueError(f"data.embeddings: {c.embeddings} has no embedding for {len(missing)} "
                         f"image(s) of split {split!r}, e.g. {missing[:3]}")
      items = [(key, path, dict(extra, embedding=table[rel(path)]))
               for key, path, extra in items]
    yield from images.read_images_skipping_bad(items, c.image_size, "RGB",
                                               what=f"images of split {split!r} in {c.folder}")


def make_builder(folder: str, image_size: int, data_dir: Optional[str] = None,
                 embeddings: Optional[str] = None) -> ImageFolder:
  """The (not yet prepared) builder for `folder` at `image_size`.

  Args:
    folder: the image folder (see the module docstring for layouts).
    image_size: side of the stored square images.
    data_dir: TFDS data directory (None: the TFDS default).
    embeddings: an .npz of per-image embeddings (`load_embeddings`), stored as the feature
      `embedding` next to each image (text conditioning); None: none.

  Returns:
    An `ImageFolder` builder; call `download_and_prepare()` (a no-op once built).

  Raises:
    FileNotFoundError: `folder` does not exist or holds no images.
  """
  folder = storage.absolute(os.path.expanduser(folder))
  if not storage.isdir(folder):
    raise FileNotFoundError(f"data.folder: {folder} is not a directory")
  if not images.list_images(folder):
    raise FileNotFoundError(f"data.folder: {folder} holds no image files "
                            f"({', '.join(images.IMAGE_EXTENSIONS)})")
  dirs = images.split_dirs(folder)
  roots = [storage.join(folder, sub) for sub in dirs.values()] or [folder]
  class_names = _class_names(roots)
  slug = "".join(ch if ch.isalnum() else "_" for ch in storage.basename(folder))[:40] or "root"
  fingerprint = _fingerprint(folder, image_size)
  dim = 0
  if embeddings:
    embeddings = storage.absolute(os.path.expanduser(embeddings))
    table = load_embeddings(embeddings)
    dim = int(next(iter(table.values())).shape[0]) if table else 0
    size, mtime_ns = _version(embeddings)  # Like the images: a changed file is built again.
    fingerprint += "_e" + hashlib.sha256(
        f"{embeddings}|{size}|{mtime_ns}".encode()).hexdigest()[:8]
  config = ImageFolderConfig(
      name=f"{slug}_{image_size}px_{fingerprint}",
      description=f"{folder} at {image_size}x{image_size}",
      folder=folder, image_size=image_size, class_names=class_names,
      split_dirs=tuple(sorted(dirs.items())), embeddings=embeddings or "",
      embedding_dim=dim)
  return base.make_builder(ImageFolder, data_dir, config=config)
