"""Reads checkpoints written by the original shortcut-models codebase (pickles of jax 0.4.x Arrays).

The original pickles `{'train_state': {'params', 'params_ema', 'opt_state', 'step'},
'_timestamp': float}`. Its arrays were pickled by jax 0.4.x as
`jax._src.array._reconstruct_array(np_reconstruct_fn, args, arr_state, aval_state)`, which a
modern jax cannot unpickle (`ShapedArray` lost its `named_shape` argument). This reader never
imports jax's private code: a restricted unpickler maps that global onto a function that rebuilds
the numpy array and drops the abstract-value state, maps optax's state classes onto optax's public
ones, and refuses every other global — so a hostile pickle cannot execute anything. The file may
be remote (gs://...): it is read through `shortcut_jax.storage`.
"""

import io
import os
import pickle
from typing import Any, Dict

import numpy as np
import optax

from shortcut_jax import errors
from shortcut_jax import storage


class LegacyCheckpointError(errors.UserError, ValueError):
  """The file is not a readable checkpoint of the original codebase."""


def _reconstruct_array(fun, args, arr_state, aval_state):
  del aval_state  # Abstract-value metadata (weak_type, named_shape): not needed for numpy.
  arr = fun(*args)
  if not isinstance(arr, np.ndarray):
    raise LegacyCheckpointError("array record did not rebuild a numpy array")
  arr.__setstate__(arr_state)
  return arr


def _numpy_reconstruct(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise LegacyCheckpointError(f"refusing to rebuild array subtype {subtype!r}")
  return np.ndarray.__new__(np.ndarray, shape, dtype)


_ALLOWED_GLOBALS = {
    ("jax._src.array", "_reconstruct_array"): _reconstruct_array,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("optax._src.transform", "ScaleByAdamState"): optax.ScaleByAdamState,
    ("optax._src.base", "EmptyState"): optax.EmptyState,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise LegacyCheckpointError(
          f"refusing to load global {module}.{name}: an original shortcut-models checkpoint "
          "holds only arrays, dicts and optax states") from None


def _to_numpy_tree(tree):
  """Dicts stay dicts, optax NamedTuples stay NamedTuples; every array leaf is a numpy array."""
  if isinstance(tree, dict):
    return {k: _to_numpy_tree(v) for k, v in tree.items()}
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_to_numpy_tree(v) for v in tree))
  if isinstance(tree, (tuple, list)):
    return type(tree)(_to_numpy_tree(v) for v in tree)
  return np.asarray(tree)


def load_original_checkpoint(path: str) -> Dict[str, Any]:
  """Loads a checkpoint pickle of the original codebase.

  Args:
    path: the `.pkl` file (the fixture, or one of the paper's released checkpoints).

  Returns:
    dict(params, params_ema, opt_state, step) with numpy leaves; `opt_state` keeps optax's
    structure `((ScaleByAdamState(count, mu, nu), EmptyState(), EmptyState()),)`; `step` is an int.

  Raises:
    FileNotFoundError: no such file.
    LegacyCheckpointError: truncated, corrupt, foreign or hostile file.
  """
  path = os.fspath(path)
  if not storage.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path!r}")
  data = storage.read_bytes(path)
  try:
    obj = _RestrictedUnpickler(io.BytesIO(data)).load()
  except LegacyCheckpointError as e:
    raise LegacyCheckpointError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
    raise LegacyCheckpointError(
        f"{path} is not a readable checkpoint of the original shortcut-models code (truncated or "
        f"corrupt pickle: {type(e).__name__}: {e})") from None
  state = obj.get("train_state") if isinstance(obj, dict) else None
  missing = ([] if isinstance(state, dict) else ["train_state"]) or [
      k for k in ("params", "params_ema", "opt_state", "step") if k not in state]
  if missing:
    raise LegacyCheckpointError(
        f"{path} is a pickle but not an original shortcut-models checkpoint: missing "
        f"{', '.join(missing)} (expected {{'train_state': {{'params', 'params_ema', 'opt_state', "
        "'step'}}}})")
  return dict(params=_to_numpy_tree(state["params"]),
              params_ema=_to_numpy_tree(state["params_ema"]),
              opt_state=_to_numpy_tree(state["opt_state"]),
              step=int(np.asarray(state["step"])))
