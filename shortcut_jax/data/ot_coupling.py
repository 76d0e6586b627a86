"""Batch-level optimal-transport coupling of noise and images (sOT, "scaling optimal transport"
of improved shortcut models): the noise each training image starts from is not drawn
independently but matched to it.

`coupled_batches` pools `pool` consecutive batches of this process (K = 32 in the paper), draws
their standard normal noise on the host, solves one assignment that minimises the total squared
distance between each image and its noise (`assign`: scipy's `linear_sum_assignment`, the exact
Hungarian solution, O(n^3) in the n = pool x batch rows), and hands each batch its matched noise
under the batch key `noise`; the objectives (`naive`, `shortcut`) start their flows there
instead of drawing. The noise of group g (steps gK ... gK + K - 1) comes from a generator seeded
by (seed, g, process), so a run resumed at any step gets the same noise as one that never
stopped: it restarts the input at the group's first step and drops the batches before the
resumed one (`group_start`). The matching runs in a background thread, one group ahead.

With `by_class`, the assignment is solved within each class label: each class's rows get a
share of the group's noise drawn for them and matched only among themselves. The label-blind
assignment gives the noise near an image of one class to that class, so the noise a class
starts from is no longer standard normal and the network can read the class from the noise
instead of the label (on the digits, accuracy 70 %: docs/results.md); within each class the
noise given the class stays standard normal, as at sampling.

Precomputed latents are matched by their posterior means (the train step samples the latent
around it); online latents are not supported (the latent is made inside the train step).
"""

import queue
import threading
from typing import Dict, Iterator, Optional

import numpy as np

from shortcut_jax.core.conditioning import NOISE


def assign(images: np.ndarray, noise: np.ndarray,
           groups: Optional[np.ndarray] = None) -> np.ndarray:
  """The permutation p minimising sum_i |images[i] - noise[p[i]]|^2 (rows flattened); with
  `groups` (one label per row), the minimum among permutations that keep every row's noise
  within its group's own rows (p[i] has the group of i)."""
  if groups is None:
    return _assign(images, noise)
  groups = np.asarray(groups).reshape(-1)
  if groups.shape[0] != images.shape[0]:
    raise ValueError(f"sOT by class: {groups.shape[0]} labels for {images.shape[0]} rows")
  out = np.empty(images.shape[0], np.int64)
  for g in np.unique(groups):
    rows = np.flatnonzero(groups == g)
    out[rows] = rows[_assign(images[rows], noise[rows])]
  return out


def _assign(images: np.ndarray, noise: np.ndarray) -> np.ndarray:
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  x = images.reshape(images.shape[0], -1).astype(np.float64)
  e = noise.reshape(noise.shape[0], -1).astype(np.float64)
  cost = (x * x).sum(1)[:, None] + (e * e).sum(1)[None, :] - 2.0 * x @ e.T
  rows, cols = linear_sum_assignment(cost)
  out = np.empty_like(cols)
  out[rows] = cols
  return out


def group_start(step: int, pool: int) -> int:
  """The first step of the group that holds `step` (where the input restarts on a resume)."""
  return step - step % pool


def coupled_batches(batches: Iterator[Dict[str, np.ndarray]], *, pool: int, seed: int,
                    start_step: int, process_index: int = 0,
                    by_class: bool = False) -> Iterator[Dict[str, np.ndarray]]:
  """`batches` (which start at `group_start(start_step, pool)`) with OT-matched `noise`, from
  step `start_step` on (module docstring). The next group is read and matched by a background
  thread while the training loop consumes this one, so the assignment does not hold up the
  steps; an error there is raised here, after the batches made before it."""
  out = queue.Queue(maxsize=pool)
  stop = threading.Event()  # Set when the consumer is done (closed or collected).

  def put(item) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for batch in _coupled(batches, pool, seed, start_step, process_index, by_class):
        if not put((batch, None)):
          return
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by the consumer)
      put((None, e))

  thread = threading.Thread(target=produce, name="ot_coupling", daemon=True)
  thread.start()
  try:
    while True:
      batch, error = out.get()
      if error is not None:
        raise error
      yield batch
  finally:  # The thread ends instead of waiting forever on a full queue.
    stop.set()


def _coupled(batches, pool, seed, start_step, process_index, by_class):
  """The matching itself, group by group (`coupled_batches`)."""
  group, skip = divmod(start_step, pool)
  while True:
    taken = [next(batches) for _ in range(pool)]
    key = "image" if "image" in taken[0] else "latent_mean"
    x = np.concatenate([b[key] for b in taken])
    rng = np.random.default_rng([seed, group, process_index, 0x5071])
    noise = rng.standard_normal(x.shape).astype(np.float32)
    if by_class and "label" not in taken[0]:
      raise ValueError("objective.ot_within_class matches noise within each class label, but "
                       f"the batches have none (keys: {sorted(taken[0])})")
    labels = np.concatenate([b["label"] for b in taken]) if by_class else None
    noise = noise[assign(x, noise, labels)]
    rows = taken[0][key].shape[0]
    for j, batch in enumerate(taken):
      if skip:
        skip -= 1
        continue
      yield dict(batch, **{NOISE: noise[j * rows:(j + 1) * rows]})
    group += 1
