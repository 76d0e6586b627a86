"""Device mesh and partitioning of the train state and batches (data parallel, FSDP, hybrid).

The mesh has two named axes, `data` and `fsdp` (sizes from `config.mesh`; -1 fills the devices
left). Batches are always split over both axes together (`('data', 'fsdp')`); what changes with
`config.sharding` is where the parameters live:

  * `dp`: every parameter is replicated on every device.
  * `fsdp`: parameters are split over the `fsdp` axis (ZeRO-3 style: XLA all-gathers a weight
    where it is used and reduce-scatters its gradient), and replicated over `data`.
  * `hybrid`: the same parameter rules as `fsdp`; the name says that the mesh has both axes
    larger than 1 (sharded within a group of `fsdp` devices, e.g. one host, replicated across
    groups).

Partitioning is data, not code: `DEFAULT_RULES` is an ordered list of (regular expression over
the parameter path, e.g. `DiTBlock_3/MlpBlock_0/Dense_0/kernel`, placement). The first rule whose
expression matches the whole path decides; paths no rule matches get `DEFAULT_PLACEMENT` (shard
the largest dimension that divides, else replicate). A placement is `REPLICATED`, `AUTO` or the
index of the dimension that goes on the `fsdp` axis. Parameters with fewer than `min_size`
elements stay replicated whatever the rules say (sharding them saves nothing and costs a
collective each). A rule that demands sharding a parameter none of whose (named) dimensions
divides the axis size is an error naming the parameter, never a silent replication.

A scanned layer stack (`model.scan_layers`, `core.layer_stack`) is placed as its layers are,
one axis on; its leading layer axis is never split.

The EMA weights and the optimizer state (Adam's mu and nu) get their parameter's placement:
optimizer leaves are matched to parameters by the end of their tree path and their shape.
Scalars (step, Adam's count) and the PRNG key are replicated.
"""

import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from shortcut_jax import errors
from shortcut_jax.core import layer_stack

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
# The batch (leading) dimension is split over both axes: every device sees its own examples.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
MODES = ("dp", "fsdp", "hybrid")

# Parameters smaller than this stay replicated (64 KiB in float32).
MIN_SHARD_SIZE = 2 ** 14

REPLICATED = "replicated"
AUTO = "auto"  # The largest dimension that divides the axis size (the first of equal ones).
Placement = Union[str, int]

# DiT (shortcut_jax.models.dit) parameter rules, first match wins.
DEFAULT_RULES: Tuple[Tuple[str, Placement], ...] = (
    # Biases and LayerNorm scales are vectors of at most a few thousand elements.
    (r"(.*/)?bias", REPLICATED),
    (r"(.*/)?scale", REPLICATED),
    # Embedding tables [rows, hidden]: the row count (num_classes + 1, 256 time buckets) rarely
    # divides the axis, the hidden size does.
    (r"(.*/)?Embed_\d+/embedding", 1),
    # Patch embedding [k, k, in, out]: the output channels (= hidden size).
    (r"(.*/)?Conv_\d+/kernel", 3),
    # adaLN modulation kernels [hidden, k × hidden] (scanned: [layers, hidden, k × hidden]): the
    # input dimension. Their input is one [B, hidden] vector per example; sharded over the output
    # features, XLA computes the modulation feature-sharded and re-lays it out over the batch with
    # an all-to-all per block (and per jvp tangent). Over the input it gathers the kernel like any
    # other: no all-to-all in the step, and fewer bytes (docs/benchmarks.md, "adaLN kernels").
    (r"(.*/)?(DiTBlock_\d+|FinalLayer_0)/Dense_0/kernel", 0),
    (r"(.*/)?DiTBlock_scan/Dense_0/kernel", 1),
    # Every Dense kernel [in, out] (adaLN, q/k/v/out projections, MLP, timestep MLPs, final
    # layer): its larger dimension that divides the axis.
    (r"(.*/)?Dense_\d+/kernel", AUTO),
)
# For paths that no rule names: like AUTO, but replicates instead of failing.
DEFAULT_PLACEMENT = AUTO


class ShardingError(errors.UserError, ValueError):
  """A mesh, batch size or partitioning rule that cannot work on the devices at hand."""


def _get(section, key):
  if isinstance(section, Mapping):
    return section[key]
  return getattr(section, key)


def mesh_shape(mesh_config, device_count: int) -> Tuple[int, int]:
  """Resolves `(data, fsdp)` sizes, filling a -1 with the devices left.

  Args:
    mesh_config: `config.mesh` (or a dict) with integer fields `data` and `fsdp`.
    device_count: number of devices the mesh must cover exactly.

  Returns:
    (data, fsdp) with data * fsdp == device_count.

  Raises:
    ShardingError: bad sizes, two -1s, or sizes that do not multiply to the device count.
  """
  sizes = {axis: _get(mesh_config, axis) for axis in MESH_AXES}
  for axis, size in sizes.items():
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not (
        size == -1 or size >= 1):
      raise ShardingError(f"mesh.{axis} must be -1 (fill) or a positive integer, got {size!r}")
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ShardingError(f"only one of mesh.data, mesh.fsdp may be -1, got {sizes}")
  fixed = int(np.prod([size for size in sizes.values() if size != -1]))
  if fill:
    if device_count % fixed:
      other = [a for a in MESH_AXES if a not in fill][0]
      raise ShardingError(
          f"mesh.{other}={sizes[other]} does not divide the {device_count} devices, so "
          f"mesh.{fill[0]}=-1 cannot fill them")
    sizes[fill[0]] = device_count // fixed
  elif fixed != device_count:
    raise ShardingError(
        f"mesh.data ({sizes['data']}) x mesh.fsdp ({sizes['fsdp']}) = {fixed} must equal the "
        f"device count ({device_count}); set one of them to -1 to fill")
  return int(sizes[DATA_AXIS]), int(sizes[FSDP_AXIS])


def make_mesh(mesh_config, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """The (`data`, `fsdp`) device mesh described by `config.mesh`.

  Args:
    mesh_config: `config.mesh` (or a dict) with `data` and `fsdp` sizes (-1 fills).
    devices: devices to use; default all devices of all processes (`jax.devices()`).

  Returns:
    A `jax.sharding.Mesh` with axes ('data', 'fsdp') of auto (jit-propagated) type. Its device
    order is `jax.make_mesh`'s (topology aware on TPUs; each process's devices contiguous).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def single_device_mesh(device=None) -> Mesh:
  """A 1x1 mesh on one device (default: this process's first device)."""
  device = jax.local_devices()[0] if device is None else device
  return make_mesh({DATA_AXIS: 1, FSDP_AXIS: 1}, [device])


def validate(mode: str, mesh: Mesh, batch_size: int, process_count: Optional[int] = None) -> None:
  """Checks the sharding mode and that the global batch splits evenly over devices and processes.

  Raises:
    ShardingError: naming `sharding`, `batch_size` and the `mesh.*` sizes involved.
  """
  if mode not in MODES:
    raise ShardingError(f"sharding must be one of {MODES}, got {mode!r}")
  process_count = jax.process_count() if process_count is None else process_count
  data, fsdp = mesh.shape[DATA_AXIS], mesh.shape[FSDP_AXIS]
  if batch_size % (data * fsdp):
    raise ShardingError(
        f"batch_size ({batch_size}) must be divisible by mesh.data x mesh.fsdp ({data} x {fsdp} "
        f"= {data * fsdp} devices): every device gets the same number of examples")
  if batch_size % process_count:
    raise ShardingError(f"batch_size ({batch_size}) must be divisible by the process count "
                        f"({process_count})")
  if mode in ("fsdp", "hybrid") and fsdp == 1 and data > 1:
    logging.warning("sharding=%r with mesh.fsdp=1: parameters stay replicated (set mesh.fsdp)",
                    mode)


def path_name(path) -> str:
  """'DiTBlock_0/Dense_0/kernel' for a tree path of dict keys, attributes or indices."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _compile_rules(rules: Iterable[Tuple[str, Placement]]):
  compiled = []
  for pattern, placement in rules:
    if not (placement in (REPLICATED, AUTO) or isinstance(placement, (int, np.integer))):
      raise ValueError(f"rule {pattern!r}: placement must be {REPLICATED!r}, {AUTO!r} or a "
                       f"dimension index, got {placement!r}")
    compiled.append((re.compile(pattern), placement))
  return compiled


def _spec_for(name: str, shape: Tuple[int, ...], placement: Placement, axis_size: int,
              min_size: int, strict: bool) -> PartitionSpec:
  """The PartitionSpec of one parameter under one placement (see the module docstring)."""
  size = int(np.prod(shape)) if shape else 1
  if placement == REPLICATED or axis_size == 1 or size < min_size:
    return PartitionSpec()
  if placement == AUTO:
    candidates = [d for d in range(len(shape)) if shape[d] % axis_size == 0]
    if not candidates:
      if strict:
        raise ShardingError(
            f"parameter {name} {tuple(shape)}: its rule asks to shard it over the "
            f"'{FSDP_AXIS}' axis of size {axis_size}, but no dimension is divisible by "
            f"{axis_size} (change mesh.fsdp or add a rule for it)")
      logging.info("parameter %s %s: no dimension divisible by %d, replicated", name, shape,
                   axis_size)
      return PartitionSpec()
    dim = max(candidates, key=lambda d: (shape[d], -d))
  else:
    dim = int(placement)
    if not -len(shape) <= dim < len(shape):
      raise ShardingError(f"parameter {name} {tuple(shape)}: its rule names dimension {dim}, "
                          f"but it has {len(shape)} dimensions")
    dim %= len(shape)
    if shape[dim] % axis_size:
      raise ShardingError(
          f"parameter {name} {tuple(shape)}: its rule shards dimension {dim} (size "
          f"{shape[dim]}) over the '{FSDP_AXIS}' axis of size {axis_size}, which does not "
          f"divide it (change mesh.fsdp or the rule)")
  spec = [None] * len(shape)
  spec[dim] = FSDP_AXIS
  return PartitionSpec(*spec)


def param_partition_specs(params_shapes, mode: str, mesh: Union[Mesh, int],
                          rules: Iterable[Tuple[str, Placement]] = DEFAULT_RULES,
                          min_size: int = MIN_SHARD_SIZE):
  """PartitionSpecs of a parameter tree.

  Args:
    params_shapes: pytree of arrays or `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape`).
    mode: 'dp', 'fsdp' or 'hybrid'.
    mesh: the mesh, or the size of its `fsdp` axis.
    rules: ordered (regex over the parameter path, placement) pairs; first full match wins.
    min_size: parameters with fewer elements stay replicated.

  Returns:
    A pytree of `PartitionSpec` with the structure of `params_shapes`.

  Raises:
    ShardingError: a rule cannot be satisfied (the message names the parameter).
  """
  if mode not in MODES:
    raise ShardingError(f"sharding must be one of {MODES}, got {mode!r}")
  axis_size = mesh.shape[FSDP_AXIS] if isinstance(mesh, Mesh) else int(mesh)
  compiled = _compile_rules(rules)

  def spec(path, leaf):
    if mode == "dp":
      return PartitionSpec()
    name, stacked = layer_stack.split_layer_axis(path_name(path))
    shape = tuple(leaf.shape)[1:] if stacked else tuple(leaf.shape)
    layer_spec = None
    for pattern, placement in compiled:
      if pattern.fullmatch(name):
        layer_spec = _spec_for(name, shape, placement, axis_size, min_size, strict=True)
        break
    if layer_spec is None:
      layer_spec = _spec_for(name, shape, DEFAULT_PLACEMENT, axis_size, min_size, strict=False)
    # A scanned stack's layer axis is never split: each scan step reads one layer whole.
    return PartitionSpec(None, *layer_spec) if stacked else layer_spec

  return jax.tree_util.tree_map_with_path(spec, params_shapes)


def _match_to_params(tree, param_specs, param_shapes):
  """Specs for a tree whose leaves may mirror parameters (optimizer state): matched by the end of
  their path and their shape; anything else (counts, scalars) is replicated."""
  by_path = {}
  for (path, spec), leaf in zip(jax.tree_util.tree_leaves_with_path(param_specs),
                                jax.tree_util.tree_leaves(param_shapes)):
    by_path[path_name(path)] = (spec, tuple(leaf.shape))

  def spec(path, leaf):
    parts = path_name(path).split("/")
    for start in range(len(parts)):
      hit = by_path.get("/".join(parts[start:]))
      if hit is not None and hit[1] == tuple(leaf.shape):
        return hit[0]
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(spec, tree)


def state_partition_specs(abstract_state, mode: str, mesh: Union[Mesh, int],
                          rules: Iterable[Tuple[str, Placement]] = DEFAULT_RULES,
                          min_size: int = MIN_SHARD_SIZE):
  """PartitionSpecs of a `TrainState`: params rules, shared by the EMA and Adam's moments and by
  the leaves of the objective's own state (`objective_state`) that mirror a parameter (a
  distillation teacher's weights); its other leaves (phases, counters) are replicated."""
  params_specs = param_partition_specs(abstract_state.params, mode, mesh, rules, min_size)
  replicated = lambda tree: jax.tree.map(lambda _: PartitionSpec(), tree)
  return abstract_state.replace(
      step=PartitionSpec(), rng=replicated(abstract_state.rng), params=params_specs,
      objective_state=_match_to_params(abstract_state.objective_state, params_specs,
                                       abstract_state.params),
      ema_params=_match_to_params(abstract_state.ema_params, params_specs, abstract_state.params),
      opt_state=_match_to_params(abstract_state.opt_state, params_specs, abstract_state.params))


def state_shardings(abstract_state, mesh: Mesh, mode: str,
                    rules: Iterable[Tuple[str, Placement]] = DEFAULT_RULES,
                    min_size: int = MIN_SHARD_SIZE):
  """`NamedSharding`s of a `TrainState` on `mesh` (see `state_partition_specs`).

  Args:
    abstract_state: the state's shapes (`jax.eval_shape(init)`), or a state.
    mesh: the ('data', 'fsdp') mesh.
    mode: 'dp', 'fsdp' or 'hybrid'.
    rules: parameter rules (default `DEFAULT_RULES`).
    min_size: parameters with fewer elements stay replicated.

  Returns:
    A TrainState-shaped pytree of `NamedSharding` (usable as jit in/out_shardings).
  """
  specs = state_partition_specs(abstract_state, mode, mesh, rules, min_size)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def with_shardings(abstract_tree, shardings):
  """`jax.ShapeDtypeStruct`s carrying `shardings` (what Orbax restores into)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def placed_copy(tree, shardings):
  """Real copies of `tree`'s arrays placed with `shardings` (a train step donates its state:
  no two leaves of it may share a buffer, e.g. weights restored once and used twice)."""
  return jax.jit(lambda x: jax.tree.map(jnp.copy, x), out_shardings=shardings)(tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over ('data', 'fsdp'), the rest whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local_batch, sharding: NamedSharding):
  """Per-process numpy batches -> global `jax.Array`s (each process passes its own rows).

  Args:
    local_batch: pytree of numpy arrays, this process's `global_batch // process_count` rows.
    sharding: `batch_sharding(mesh)`.

  Returns:
    The same pytree of global arrays, split over the mesh's devices.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def describe(specs) -> str:
  """One line per sharded leaf (for logs): 'path shape -> spec'."""
  lines = [f"{path_name(p)} -> {s}" for p, s in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, PartitionSpec)) if any(a is not None for a in s)]
  return "\n".join(lines)


def bytes_per_device(tree, shardings) -> int:
  """Bytes that one device holds of `tree` (shapes/dtypes) placed with `shardings`."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))):
    shard = sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
  return total
