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
_NUMBERED = re.compile(r"(.+)_(\d+)$")


def _stacks(tree: Mapping, names: Optional[Tuple[str, ...]]) -> dict:
  """{name: [the numbered subtrees in order]} of a dict's `<name>_<i>` keys (dicts numbered
  from 0 without gaps; one is enough for a name in `names`, two for any other)."""
  groups = {}
  for key, value in tree.items():
    m = _NUMBERED.match(str(key))
    if m and isinstance(value, Mapping):
      groups.setdefault(m.group(1), {})[int(m.group(2))] = key
  return {name: [tree[keys[i]] for i in range(len(keys))] for name, keys in groups.items()
          if (names is None or name in names) and len(keys) > (0 if names else 1)
          and sorted(keys) == list(range(len(keys)))}


def _leaf_stack(*leaves):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(leaves),) + first.shape, first.dtype,
                                sharding=_with_layer_axis(first.sharding))
  return jnp.stack(leaves)


def _leaf_unstack(leaf, n):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    one = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype,
                               sharding=_without_layer_axis(leaf.sharding))
    return [one] * n
  return [leaf[i] for i in range(n)]


def _with_layer_axis(sharding):
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))
  return sharding


def _without_layer_axis(sharding):
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
  return sharding


def _convert_dict(tree: Mapping, scanned: bool, names: Optional[Tuple[str, ...]]):
  out = {}
  if scanned:
    stacks = _stacks(tree, names)
    for key, value in tree.items():
      m = _NUMBERED.match(str(key))
      if not (m and m.group(1) in stacks):
        out[key] = convert(value, scanned, names)
    for name, layers in stacks.items():
      layers = [convert(layer, scanned, names) for layer in layers]
      out[name + SCAN_SUFFIX] = jax.tree.map(_leaf_stack, *layers)
    return out
  for key, value in tree.items():
    key_s = str(key)
    if key_s.endswith(SCAN_SUFFIX) and isinstance(value, Mapping):
      name = key_s[:-len(SCAN_SUFFIX)]
      n = layer_count(value)
      per_leaf = jax.tree.map(lambda a: _leaf_unstack(a, n), value)
      for i in range(n):
        out[f"{name}_{i}"] = convert(jax.tree.map(lambda parts: parts[i], per_leaf,
                                                  is_leaf=lambda x: isinstance(x, list)),
                                     scanned, names)
    else:
      out[key] = convert(value, scanned, names)
  return out


def convert(tree: Any, scanned: bool, names: Optional[Tuple[str, ...]] = ("DiTBlock",)) -> Any:
  """`tree` with every stack of layers named in `names` (None: any numbered siblings) in the
  scanned (True) or unrolled (False) layout; everything else unchanged. Works inside any pytree
  (a TrainState, optax states) and on arrays or `jax.ShapeDtypeStruct`s."""
  if isinstance(tree, Mapping):
    return _convert_dict(tree, scanned, names)
  if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
    return type(tree)(convert(v, scanned, names) for v in tree)
  if hasattr(tree, "_fields"):  # NamedTuple (optax states).
    return type(tree)(*(convert(v, scanned, names) for v in tree))
  if hasattr(tree, "__dataclass_fields__") and hasattr(tree, "replace"):  # flax struct.
    return tree.replace(**{f: convert(getattr(tree, f), scanned, names)
                           for f in tree.__dataclass_fields__
                           if tree.__dataclass_fields__[f].metadata.get("pytree_node", True)})
  return tree


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
  if any("'DiTBlock_0'" in n for n in names):
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
