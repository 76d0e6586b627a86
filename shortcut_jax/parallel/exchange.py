"""Every process's small JSON record, exchanged so that all processes of a job take the same
decision (the workdir lock, checkpoint recovery): `exchange_json`."""

import json

import jax
import numpy as np


def exchange_json(record, limit: int = 8192) -> list:
  """Every process's `record` (a small JSON value), in process order; a collective with several
  processes (every process must call it, at the same point). When any process's JSON is longer
  than `limit` - 4 bytes, every process raises the same ValueError (none is left waiting)."""
  if jax.process_count() == 1:
    return [record]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = json.dumps(record).encode("utf-8")
  too_long = len(data) > limit - 4
  buf = np.zeros(limit, np.uint8)
  header = np.uint32(0xFFFFFFFF if too_long else len(data))
  buf[:4] = np.frombuffer(header.tobytes(), np.uint8)
  if not too_long:
    buf[4:4 + len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), -1)
  sizes = [int(np.frombuffer(row[:4].tobytes(), np.uint32)[0]) for row in rows]
  over = [i for i, n in enumerate(sizes) if n == 0xFFFFFFFF]
  if over:
    raise ValueError(f"exchange_json: the records of processes {over} exceed {limit - 4} bytes")
  return [json.loads(row[4:4 + n].tobytes().decode("utf-8")) for row, n in zip(rows, sizes)]
