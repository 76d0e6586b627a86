"""Decisions every process takes alike: each process's outcome of a checkpoint operation as a
small JSON record, exchanged so that all of them see every record (`exchange`), and `run`,
which turns an operation's exception into such a record so that every process reaches the
exchange."""

from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
from absl import logging

from shortcut_jax.checkpoints import integrity
from shortcut_jax.checkpoints.matching import CheckpointMismatchError
from shortcut_jax.parallel import distributed


_EXCHANGE_BYTES = 8192  # Fixed size of one process's record in a verdict exchange.
_MESSAGE_CHARS = 1000  # At most 6 JSON bytes a character: the record fits.


def exchange(record: Dict[str, Any]) -> List[Dict[str, Any]]:
  """Every process's outcome `record`, in process order (`distributed.exchange_json`; its
  message shortened to fit)."""
  record = dict(record)
  if "message" in record:
    record["message"] = str(record["message"])[:_MESSAGE_CHARS]
  return distributed.exchange_json(record, _EXCHANGE_BYTES)


def run(fn: Callable[[], Any]) -> Tuple[Optional[Any], Dict[str, Any]]:
  """(fn(), this process's outcome record) — exceptions become the record, never raised here,
  so that every process reaches the exchange that follows."""
  me = jax.process_index()
  try:
    return fn(), {"verdict": "ok", "process": me}
  except CheckpointMismatchError as e:
    return None, {"verdict": "mismatch", "process": me, "message": str(e)}
  except Exception as e:  # pylint: disable=broad-except  # Anything: I/O, OOM, TensorStore, ...
    logging.exception("checkpoint operation failed on process %d", me)
    return None, {"verdict": "failed", "process": me, "message": integrity.first_line(e)}
