"""The one progress bar of long offline work (sampling, FID, SR metrics), and its default: on
in eval.py's modes, off in training."""

import contextlib
import functools
from typing import Optional

import jax


_PROGRESS = [False]  # The default of `progress=None`: off in training, on in eval.py's modes.


def progress_bars(fn):
  """Decorator: progress bars default to on while `fn` runs (the offline modes of eval.py)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    previous, _PROGRESS[0] = _PROGRESS[0], True
    try:
      return fn(*args, **kwargs)
    finally:
      _PROGRESS[0] = previous
  return wrapped


class _NoBar:

  def update(self, n):
    del n


@contextlib.contextmanager
def progress_bar(total: Optional[int], desc: str, show: Optional[bool] = None, unit: str = "img"):
  """The one progress bar of long offline work (sampling, FID, SR metrics): images done, rate
  and ETA, on process 0 only (`fid.progress_bar`, tqdm). A context manager yielding an object
  with `update(n)`; a no-op when `show` is False (None: the `progress_bars` default) or tqdm is
  missing."""
  from shortcut_jax.evaluators import fid  # pylint: disable=g-import-not-at-top
  show = _PROGRESS[0] if show is None else show
  bar = fid.progress_bar(total, desc, unit=unit) if show and jax.process_index() == 0 else None
  try:
    yield bar if bar is not None else _NoBar()
  finally:
    if bar is not None:
      bar.close()
