"""Batches split over a device mesh for data-parallel evaluation: the mesh, which rows of a
batch each process holds, and moving those rows between the host and the devices."""

from typing import Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax.parallel import sharding


def data_mesh() -> Mesh:
  """A 1-D mesh over every device of every process; batches are split along its `data` axis.

  The devices are ordered by process (process 0's first), so every process holds one contiguous
  block of rows of each batch (`local_rows`). With one process: all its devices.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (sharding.DATA_AXIS,))


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices only (work that one process does alone)."""
  return Mesh(np.asarray(jax.local_devices()), (sharding.DATA_AXIS,))


def is_multi_process(mesh: Mesh) -> bool:
  """Whether `mesh` has devices of other processes (its arrays are then not fully addressable)."""
  return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def local_rows(mesh: Mesh, batch_size: int) -> Tuple[int, int]:
  """The rows [lo, hi) of a `batch_size`-row batch split over `mesh` that this process holds."""
  spec = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  spans = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                  for s in spec.addressable_devices_indices_map((batch_size,)).values()})
  lo, hi = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != hi - lo:
    raise ValueError(f"this process's rows of the mesh are not contiguous: {spans}")
  return lo, hi


def put_batch(x, mesh: Mesh) -> jax.Array:
  """A batch (the same host array on every process) split over `mesh`'s data axis; with several
  processes each one transfers only its own rows (`local_rows`)."""
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  if isinstance(x, jax.Array) and x.sharding == data:
    return x
  if not is_multi_process(mesh):
    return jax.device_put(x, data)
  x = np.asarray(x)
  lo, hi = local_rows(mesh, x.shape[0])
  return jax.make_array_from_process_local_data(data, x[lo:hi], x.shape)


def local_part(x: jax.Array) -> Tuple[np.ndarray, int]:
  """This process's rows of a batch split along its first axis, on the host, and the index of
  the first (0 for a fully addressable array: all of it)."""
  if x.is_fully_addressable:
    return np.asarray(x), 0
  shards = {}
  for s in x.addressable_shards:
    shards.setdefault(s.index[0].start or 0, s)
  starts = sorted(shards)
  return np.concatenate([np.asarray(shards[k].data) for k in starts]), starts[0]


def to_host(x) -> np.ndarray:
  """Every row of a batch on every process (gathered across processes when it is split)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def round_up_batch(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh size that is >= batch_size."""
  if batch_size <= 0:
    raise ValueError(f"batch size must be positive, got {batch_size}")
  return -(-batch_size // mesh.size) * mesh.size
