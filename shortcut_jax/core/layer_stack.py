"""Two layouts of a stack of identical layers' parameters, and the conversion between them.

Unrolled (the original's): one subtree per layer, `<Name>_0`, `<Name>_1`, ... (the DiT's
`DiTBlock_0` ... `DiTBlock_<depth - 1>`). Scanned (`model.scan_layers`, `nn.scan`): one subtree
`<Name>_scan` whose arrays have a leading layer axis. `convert` turns any pytree (parameters,
EMA weights, Adam's moments, abstract shapes with shardings) into either layout; it is
idempotent, so every place that hands weights from one run to another calls it unconditionally.
The sharding rules see a scanned array as its layer's array plus a leading axis that is never
split (`split_layer_axis`).
"""

import re
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SCAN_SUFFIX = "_scan"
LAYER = "DiTBlock"  # The stacked layers' name: `DiTBlock_<i>` unrolled, `DiTBlock_scan` scanned.
_NUMBERED = re.compile(rf"{LAYER}_(\d+)$")
_STACKED = LAYER + SCAN_SUFFIX


def _with_layer_axis(sharding, add: bool):
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return sharding
  spec = (None, *sharding.spec) if add else sharding.spec[1:]
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))


def _stack(*leaves):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(leaves),) + first.shape, first.dtype,
                                sharding=_with_layer_axis(first.sharding, add=True))
  return jnp.stack(leaves)


def _take(leaf, i: int):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype,
                                sharding=_with_layer_axis(leaf.sharding, add=False))
  return leaf[i]


def _holds_layers(node, scanned: bool) -> bool:
  """Whether `node` is a dict with layers to convert into the `scanned` layout."""
  if not isinstance(node, Mapping):
    return False
  if scanned:
    return any(_NUMBERED.match(str(k)) for k in node)
  return _STACKED in node


def _converted(node: Mapping, scanned: bool) -> dict:
  if scanned:
    layers = sorted((int(_NUMBERED.match(str(k)).group(1)), v) for k, v in node.items()
                    if _NUMBERED.match(str(k)))
    if [i for i, _ in layers] != list(range(len(layers))):
      raise ValueError(f"layers {[i for i, _ in layers]} are not numbered 0, 1, ...")
    out = {k: v for k, v in node.items() if not _NUMBERED.match(str(k))}
    out[_STACKED] = jax.tree.map(_stack, *[v for _, v in layers])
    return out
  out = {k: v for k, v in node.items() if k != _STACKED}
  stacked = node[_STACKED]
  for i in range(layer_count(stacked)):
    out[f"{LAYER}_{i}"] = jax.tree.map(lambda a, i=i: _take(a, i), stacked)
  return out


def convert(tree: Any, scanned: bool) -> Any:
  """`tree` with its DiT block stack in the scanned (True) or unrolled (False) layout,
  everything else unchanged: any pytree (a TrainState, optax states, a parameter dict) of
  arrays or `jax.ShapeDtypeStruct`s. Idempotent."""
  return jax.tree.map(lambda node: _converted(node, scanned) if _holds_layers(node, scanned)
                      else node, tree, is_leaf=lambda node: _holds_layers(node, scanned))


def layer_count(stacked: Mapping) -> int:
  """The number of layers of a scanned subtree (its arrays' leading axis)."""
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError("a scanned layer stack without arrays")
  return int(np.shape(leaves[0])[0])


def is_scanned(tree: Any) -> Optional[bool]:
  """True if `tree` holds a scanned stack, False if an unrolled one (`DiTBlock_0`), None if
  neither (judged by the leaf paths)."""
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  if any(f"{SCAN_SUFFIX}'" in n for n in names):
    return True
  if any(f"'{LAYER}_0'" in n for n in names):
    return False
  return None


def split_layer_axis(name: str) -> Tuple[str, bool]:
  """(the parameter's name as its layer's, whether it has a leading layer axis): the sharding
  rules place `DiTBlock_scan/MlpBlock_0/...` as `DiTBlock_0/MlpBlock_0/...` one axis on."""
  parts = name.split("/")
  for i, part in enumerate(parts):
    if part.endswith(SCAN_SUFFIX):
      parts[i] = part[:-len(SCAN_SUFFIX)] + "_0"
      return "/".join(parts), True
  return name, False
