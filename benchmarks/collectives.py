"""Collectives of the compiled train step per sharding mode and objective, on faked CPU devices.

XLA compiles the same SPMD program for faked CPU devices (`--xla_force_host_platform_device_count`)
as for a pod, and the compiled HLO names every collective the step runs with its shapes. So the
communication of a layout is visible without a pod: this script lowers and compiles the real
train step (`experiment.build_experiment`, `experiment.make_mesh`, `experiment.sharded_abstract_state`,
`train_step.make_train_step`, with the trainer's in/out shardings; nothing is allocated or run:
`jit(...).lower(abstract args).compile()`), reads `compiled.as_text()` and prints, per (size,
devices, sharding, objective), one JSON object per line:

  * `counts`, `bytes`: number and operand bytes of every all-reduce, all-gather, reduce-scatter,
    all-to-all and collective-permute in the per-device program (the sum of the sizes of the
    operands; a tuple-shaped (combined) collective counts once with all its operands; the async
    `-start` / `-done` pair counts once, at its `-start`). `result_bytes`: the same with the
    result shapes (for an all-gather, the gathered size: n times its operand). Counts are
    static: an op inside a loop body counts once (the DiT's blocks are unrolled, so there are no
    loops around the step's collectives).
  * `total_bytes` (the sum over kinds), `minimum_bytes` (below) and `ratio` = total / minimum.
  * `per_device_memory_bytes`: `compiled.memory_analysis()` (argument, output, alias, temp and
    `peak` = argument + output - alias + temp), per device for an SPMD program.
  * `flops_per_device`: `compiled.cost_analysis()['flops']` (None where unavailable).
  * `compile_s` (lower + compile, wall clock; the CPU is shared, so indicative only).

Minimum (operand-bytes convention, the same as `bytes`). P = float32 bytes of all parameters,
S = those of the parameters the layout shards over the `fsdp` axis (size n), R = P - S (replicated:
biases, scales, small kernels), d = the `data` axis size.
  * dp (n = 1): one all-reduce of the gradients: P.
  * fsdp / hybrid: the gradients: one reduce-scatter of the sharded gradients over `fsdp` (S),
    for d > 1 one all-reduce of the resulting shards over `data` (S / n), one all-reduce of the
    replicated gradients (R); the weights: one all-gather of the sharded parameters (operand
    S / n) per set of weights the step's network passes read: the online weights (trained
    forward, backward and MeanFlow's jvp all read them; XLA keeps the gathered weights for the
    backward pass, measured: naive fsdp gathers S / n once) plus the shortcut teacher's EMA
    weights (both half steps read the same ones; none when `bootstrap_ema` is off).
    So minimum = S + R + [d > 1] S / n + (1 + [EMA teacher]) S / n. ZeRO-3's schedule, which
    gathers again for the backward pass and for every teacher pass, would add S / n per pass:
    this is the lower bound of that schedule. XLA beats it where activations are smaller than
    the weights (DiT's adaLN kernels: their gradients come from gathered [B, hidden] inputs
    instead of a reduction), so a ratio below 1 happens.
The CPU backend reduces gradients with all-reduces (no reduce-scatter pass): the operand bytes
are the same. Gathers are counted in float32, the parameters' dtype (a gather after the cast to
a bfloat16 compute dtype would move half that; the CPU backend runs bfloat16 collectives in
float32 anyway, between two converts). Operand bytes are not wire bytes: over a ring an
all-gather sends n - 1 times its operand, an all-reduce about twice its operand. Scalar
reductions of the metrics (a few bytes each) are in the measured bytes, not in the minimum.

  python benchmarks/collectives.py --sizes=B,XL,digits --devices=8,64 \\
      --shardings=dp,fsdp,hybrid --objectives=naive,shortcut,meanflow [--out=FILE.jsonl]
  python benchmarks/collectives.py --table=FILE.jsonl[,FILE2.jsonl]   # a markdown table

Sizes: `B` / `XL` are configs/imagenet_dit_b.py / imagenet_dit_xl.py (DiT-B/2, DiT-XL/2, 1,000
classes, CFG bootstrap targets, bfloat16 compute) on 32x32x4 latents fed as the batch (the shape of
precomputed latents, without the posterior sample, which moves nothing between devices);
`digits` is configs/digits_shortcut.py (16x16x1, float32). The objective is replaced by each of
`--objectives` (its other config fields stay). Batch: `--per_device_batch` (8) per device.
Meshes: dp = (data n, fsdp 1), fsdp = (1, n), hybrid = (n / h, h) with h = `--hybrid_fsdp`
(default min(8, n / 2)). Each device count runs in its own subprocess (the count is fixed when
jax is imported). Results are in docs/benchmarks.md ("Collectives per train step").
"""

import argparse
import collections
import importlib
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
SIZES = {"B": "imagenet_dit_b", "XL": "imagenet_dit_xl", "digits": "digits_shortcut"}


def weight_sets(objective: str, objective_config) -> int:
  """Distinct (sharded) weight sets the objective's step reads: the online weights, plus the
  shortcut teacher's EMA weights when `bootstrap_ema` (MeanFlow's jvp reads the online ones)."""
  if objective == "shortcut" and objective_config.get("bootstrap_ema", True):
    return 2
  return 1


# ------------------------------------------------------------------------------------------------
# HLO text parsing (no jax needed).

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5,
    "s2": 0.25, "u2": 0.25, "token": 0, "tuple": 0, "opaque": 0,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
# `%name = SHAPE opcode(` (SHAPE: an array shape with its layout, or a parenthesised tuple);
# the name may lack the `%` (newer printers) and the line may start with ROOT.
_COMMENT = re.compile(r"/\*.*?\*/")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.+?)\s+"
    r"(?P<opcode>[a-z][a-z0-9\-]*)\((?P<rest>.*)$")


def dtype_bytes(dtype: str) -> float:
  if dtype in DTYPE_BYTES:
    return DTYPE_BYTES[dtype]
  if dtype.startswith("f8") or dtype.startswith("f4") or dtype.startswith("f6"):
    return {"f8": 1, "f6": 0.75, "f4": 0.5}[dtype[:2]]
  raise ValueError(f"unknown HLO element type {dtype!r}")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string: an array `f32[8,128]{1,0}` or a tuple `(f32[2], s32[])`
  (summed over its arrays; layouts, `<=` dynamic bounds and tiling annotations ignored)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for d in dims.split(","):
      d = d.strip().lstrip("<=").strip()
      if d:
        count *= int(d)
    total += count * dtype_bytes(dtype)
  return int(total)


def _split_top_level(text: str):
  """(the text inside the opcode's parentheses, what follows), for `rest` after `opcode(`."""
  depth = 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0:
        return text[:i], text[i + 1:]
  return text, ""


def _operands(args: str):
  """(inline shape or None, instruction name) of each operand in an operand list:
  `f32[8]{0} %x, f32[2]{0} %y` or `%x, %y` (the compiled module's printer omits the shapes)."""
  pieces, depth, start = [], 0, 0
  for i, ch in enumerate(args):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      pieces.append(args[start:i])
      start = i + 1
  pieces.append(args[start:])
  operands = []
  for piece in (p.strip() for p in pieces):
    if piece:
      head, _, name = piece.rpartition(" ")
      operands.append((head.strip() or None, name.lstrip("%")))
  return operands


def group_size(attributes: str):
  """Devices per replica group from `replica_groups={{0,1},{2,3}}` or the iota form
  `replica_groups=[2,4]<=[8]` (None when absent, e.g. collective-permute)."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
  if m:  # `mesh['axis_0'=8,'axis_1'=1] {'axis_0'}`: the product of the named axes' sizes.
    sizes = {k.strip("' "): int(v) for k, v in
             (item.split("=") for item in m.group(1).split(",") if "=" in item)}
    size = 1
    for axis in m.group(2).split(","):
      if axis.strip("' "):
        size *= sizes[axis.strip("' ")]
    return size
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attributes)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([^}]*)\}", attributes)
  if m:
    return len([x for x in m.group(1).split(",") if x.strip()])
  return None


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\{\s*$")
_CALLEE = re.compile(r"\b(?P<how>calls|body|condition|to_apply|true_computation|"
                     r"false_computation)=%?(?P<name>[\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{(?P<names>[^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(?P<n>\d+)"\}')


def executions(hlo_text: str):
  """{computation: how many times one run of the module runs it}: 1 for the entry, the trip
  count for a while loop's body (from XLA's `known_trip_count`; 1 where unknown), times the
  count of the computation that calls it, summed over call sites. A collective in the body of
  a `lax.scan` (scanned layers, accumulated microbatches) runs that many times per step."""
  edges, current, entry = [], None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = header.group("name")
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    line = _COMMENT.sub("", line)
    trip = _TRIP_COUNT.search(line)
    for m in _CALLEE.finditer(line):
      factor = int(trip.group("n")) if (m.group("how") == "body" and trip) else 1
      edges.append((current, m.group("name"), factor))
    for m in _BRANCHES.finditer(line):
      for name in m.group("names").split(","):
        edges.append((current, name.strip().lstrip("%"), 1))
  callers = collections.defaultdict(list)
  for caller, callee, factor in edges:
    callers[callee].append((caller, factor))
  memo = {}

  def count(name, seen=()):
    if name not in memo:
      if name == entry or name not in callers or name in seen:
        memo[name] = 1
      else:
        memo[name] = sum(f * count(c, seen + (name,)) for c, f in callers[name])
    return memo[name]

  return {name: count(name) for name in set(callers) | ({entry} if entry else set())}


def parse_collectives(hlo_text: str):
  """Every collective of an HLO module's text.

  Returns:
    A list of dicts {kind, name, operand_bytes, result_bytes, group_size, runs}, one per
    collective instruction, `runs` the times one step runs it (`executions`; the counts and
    bytes of `summarize` are per step):
    `-start` forms count as their kind with the operands they send (their tuple result holds
    operand and destination buffers, so their `result_bytes` is derived from the operands and
    the group size); `-done` forms are skipped; an `async-start` wrapping a collective counts
    through the collective in its wrapped computation. Operand shapes are read inline where
    printed, else from the operand's defining instruction (the compiled module's printer).
  """
  shapes = {}
  found = []
  runs = executions(hlo_text)
  current = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = header.group("name")
      continue
    m = _INSTRUCTION.match(_COMMENT.sub("", line))
    if not m:
      continue
    name, shape, opcode = m.group("name"), m.group("shape").strip(), m.group("opcode")
    shapes[name] = shape
    kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    if kind not in KINDS:
      continue
    args, attributes = _split_top_level(m.group("rest"))
    operand_bytes = 0
    for inline, operand in _operands(args):
      if inline is None and operand not in shapes:
        raise ValueError(f"collective {name}: operand {operand} not defined before it")
      operand_bytes += shape_bytes(inline if inline is not None else shapes[operand])
    groups = group_size(attributes)
    if opcode.endswith("-start"):
      # The result is a tuple of (operands, destinations[, contexts]): derive the destination.
      factor = {"all-gather": groups or 1, "reduce-scatter": 1 / (groups or 1)}.get(kind, 1)
      result_bytes = operand_bytes * factor
    else:
      result_bytes = shape_bytes(shape)
    found.append({"kind": kind, "name": name, "operand_bytes": int(operand_bytes),
                  "result_bytes": int(result_bytes), "group_size": groups,
                  "runs": runs.get(current, 1)})
  return found


def summarize(collectives):
  """{counts, bytes, result_bytes} per kind (every kind present, zeros included) and totals."""
  counts = collections.OrderedDict((k, 0) for k in KINDS)
  sizes = collections.OrderedDict((k, 0) for k in KINDS)
  results = collections.OrderedDict((k, 0) for k in KINDS)
  for c in collectives:
    runs = c.get("runs", 1)
    counts[c["kind"]] += runs
    sizes[c["kind"]] += c["operand_bytes"] * runs
    results[c["kind"]] += c["result_bytes"] * runs
  return {"counts": dict(counts), "bytes": dict(sizes), "result_bytes": dict(results),
          "total_count": sum(counts.values()), "total_bytes": sum(sizes.values())}


def minimum_bytes(param_bytes: int, sharded_bytes: int, data: int, fsdp: int,
                  weight_sets: int = 1) -> dict:
  """The layout's minimum collective operand bytes (module docstring), with its terms."""
  p, s = int(param_bytes), int(sharded_bytes)
  if fsdp == 1 or s == 0:
    return {"gradient_all_reduce": p, "total": p}
  shard = s // fsdp
  terms = {
      "gradient_reduce_scatter": s,
      "gradient_all_reduce_over_data": shard if data > 1 else 0,
      "replicated_gradient_all_reduce": p - s,
      "parameter_all_gathers": weight_sets * shard,
  }
  terms["total"] = sum(terms.values())
  return terms


# ------------------------------------------------------------------------------------------------
# Compiling the train step (in a worker whose device count is fixed).

def mesh_sizes(sharding: str, devices: int, hybrid_fsdp: int):
  if sharding == "dp":
    return devices, 1
  if sharding == "fsdp":
    return 1, devices
  h = hybrid_fsdp or min(8, max(devices // 2, 1))
  if devices % h:
    raise ValueError(f"--hybrid_fsdp={h} does not divide {devices} devices")
  return devices // h, h


def make_config(size: str, objective: str, sharding: str, devices: int, per_device_batch: int,
                hybrid_fsdp: int, accumulate_steps: int = 1, scan_layers: bool = False):
  """(config, image_shape) of one measurement."""
  sys.path.insert(0, ROOT)
  c = importlib.import_module(f"configs.{SIZES[size]}").get_config()
  c.unlock()
  if size == "digits":
    image_shape = (c.data.image_size, c.data.image_size, 1)
  else:
    # Latents fed as the batch (the precomputed layout's shape, no VAE in the step).
    c.data.update(latents="none", image_size=32)
    image_shape = (32, 32, 4)
  c.objective.name = objective
  c.batch_size = per_device_batch * devices
  c.sharding = sharding
  data, fsdp = mesh_sizes(sharding, devices, hybrid_fsdp)
  c.mesh.update(data=data, fsdp=fsdp)
  c.optim.accumulate_steps = accumulate_steps
  c.model.scan_layers = scan_layers
  c.lock()
  return c, image_shape


def measure(size: str, objective: str, sharding: str, args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from shortcut_jax.parallel import sharding as sharding_lib
  from shortcut_jax.train import train_step as train_step_lib
  from shortcut_jax import experiment

  devices = jax.devices()
  n = len(devices)
  c, image_shape = make_config(size, objective, sharding, n, args.per_device_batch,
                               args.hybrid_fsdp, args.accumulate_steps, args.scan_layers)
  start = time.time()
  exp = experiment.build_experiment(c, image_shape=image_shape)
  mesh = experiment.make_mesh(c, devices)
  abstract, shardings = experiment.sharded_abstract_state(exp, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  batch = {key: jax.ShapeDtypeStruct((c.batch_size,) + tuple(shape), jnp.float32,
                                     sharding=batch_sharding)
           for key, shape in exp.batch_spec.items()}
  if c.data.num_classes > 1:
    batch["label"] = jax.ShapeDtypeStruct((c.batch_size,), jnp.int32, sharding=batch_sharding)
  step_fn = train_step_lib.make_train_step(
      exp.model, exp.objective, exp.tx, exp.lr_schedule, c.objective, c.optim.ema_rate,
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding_lib.replicated(mesh)),
      accumulate_steps=c.optim.accumulate_steps, reduce_once=c.sharding == "dp")
  compiled = step_fn.lower(abstract, batch).compile()
  compile_s = time.time() - start

  summary = summarize(parse_collectives(compiled.as_text()))
  params, specs = abstract.params, shardings.params
  leaves = jax.tree.leaves(params)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  param_bytes = sum(int(np.prod(l.shape)) * np.dtype(l.dtype).itemsize for l in leaves)
  sharded_bytes = sum(int(np.prod(l.shape)) * np.dtype(l.dtype).itemsize
                      for l, s in zip(leaves, spec_leaves)
                      if any(a is not None for a in s.spec))
  data, fsdp = mesh.shape[sharding_lib.DATA_AXIS], mesh.shape[sharding_lib.FSDP_AXIS]
  minimum = minimum_bytes(param_bytes, sharded_bytes, data, fsdp,
                          weight_sets(objective, c.objective))
  stats = compiled.memory_analysis()
  memory = None
  if stats is not None:
    memory = {"argument": int(stats.argument_size_in_bytes),
              "output": int(stats.output_size_in_bytes),
              "alias": int(stats.alias_size_in_bytes), "temp": int(stats.temp_size_in_bytes)}
    memory["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  flops = None
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    flops = float(value) if value is not None and value > 0 else None
  except Exception:  # pylint: disable=broad-except
    pass
  return {
      "size": size, "devices": n, "sharding": sharding, "objective": objective,
      "mesh": {"data": data, "fsdp": fsdp}, "global_batch": c.batch_size,
      "accumulate_steps": c.optim.accumulate_steps, "scan_layers": c.model.scan_layers,
      "image_shape": list(image_shape), "compute_dtype": c.model.dtype,
      "param_count": sum(int(np.prod(l.shape)) for l in leaves),
      "param_bytes": param_bytes, "sharded_param_bytes": sharded_bytes,
      "counts": summary["counts"], "bytes": summary["bytes"],
      "result_bytes": summary["result_bytes"], "total_bytes": summary["total_bytes"],
      "minimum_bytes": minimum["total"], "minimum_terms": minimum,
      "ratio": round(summary["total_bytes"] / minimum["total"], 4),
      "ratio_to_param_bytes": round(summary["total_bytes"] / param_bytes, 4),
      "per_device_memory_bytes": memory, "flops_per_device": flops,
      "compile_s": round(compile_s, 1), "jax": jax.__version__, "backend": jax.default_backend(),
  }


def table(paths) -> str:
  """A markdown table of result lines (JSON lines files), bytes in MB (10^6) and as multiples
  of the float32 parameter bytes P."""
  head = ("| size | dev | sharding | objective | all-reduce | all-gather | all-to-all | "
          "coll.-permute | reduce-scatter | total / P | minimum / P | ratio | peak MiB/dev | "
          "GFLOP/dev | compile |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for path in paths:
    for line in open(path):
      if not line.startswith("{"):
        continue
      r = json.loads(line)
      if "error" in r:
        lines.append(f"| {r['size']} | {r['devices']} | {r['sharding']} | {r['objective']} | "
                     f"error: {r['error'][:80]} |")
        continue
      p = r["param_bytes"]
      cell = lambda k: (f"{r['counts'][k]} ({r['bytes'][k] / 1e6:,.1f} MB)"
                        if r["counts"][k] else "0")
      mem = r["per_device_memory_bytes"] or {}
      flops = r["flops_per_device"]
      lines.append(
          f"| {r['size']} | {r['devices']} | {r['sharding']} | {r['objective']} | "
          f"{cell('all-reduce')} | {cell('all-gather')} | {cell('all-to-all')} | "
          f"{cell('collective-permute')} | {cell('reduce-scatter')} | "
          f"{r['total_bytes'] / p:.3f} | {r['minimum_bytes'] / p:.3f} | {r['ratio']:.3f} | "
          f"{mem.get('peak', 0) / 2 ** 20:,.0f} | "
          f"{'-' if flops is None else f'{flops / 1e9:,.0f}'} | {r['compile_s']:.0f} s |")
  return "\n".join(lines)


def worker(args):
  import jax
  n = jax.device_count()
  if n != args.worker_devices:
    raise SystemExit(f"expected {args.worker_devices} devices, jax has {n} (XLA_FLAGS set "
                     f"before jax was imported?)")
  for size in args.sizes.split(","):
    for sharding in args.shardings.split(","):
      for objective in args.objectives.split(","):
        try:
          row = measure(size, objective, sharding, args)
        except Exception as e:  # pylint: disable=broad-except
          row = {"size": size, "devices": n, "sharding": sharding, "objective": objective,
                 "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(row), flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="digits,B", help="comma list of B, XL, digits")
  p.add_argument("--devices", default="8", help="comma list of faked CPU device counts")
  p.add_argument("--shardings", default="dp,fsdp,hybrid")
  p.add_argument("--objectives", default="naive,shortcut,meanflow")
  p.add_argument("--per_device_batch", type=int, default=8)
  p.add_argument("--hybrid_fsdp", type=int, default=0,
                 help="fsdp axis size of the hybrid mesh (0: min(8, devices / 2))")
  p.add_argument("--accumulate_steps", type=int, default=1,
                 help="optim.accumulate_steps (microbatches per update)")
  p.add_argument("--scan_layers", action="store_true", help="model.scan_layers")
  p.add_argument("--out", default=None, help="also append the JSON lines to this file")
  p.add_argument("--table", default=None,
                 help="print a markdown table of these JSON lines files (comma list) and exit")
  p.add_argument("--worker_devices", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.table:
    print(table(args.table.split(",")))
    return
  for size in args.sizes.split(","):
    if size not in SIZES:
      p.error(f"unknown size {size!r}: use {sorted(SIZES)}")

  if args.worker_devices:
    sys.path.insert(0, ROOT)
    worker(args)
    return

  passed = [f"--sizes={args.sizes}", f"--shardings={args.shardings}",
            f"--objectives={args.objectives}", f"--per_device_batch={args.per_device_batch}",
            f"--hybrid_fsdp={args.hybrid_fsdp}", f"--accumulate_steps={args.accumulate_steps}"]
  if args.scan_layers:
    passed.append("--scan_layers")
  for count in (int(d) for d in args.devices.split(",")):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={count}").strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = [sys.executable, os.path.abspath(__file__), *passed, f"--worker_devices={count}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      if args.out and line.startswith("{"):
        with open(args.out, "a") as f:
          f.write(line)
    if proc.wait():
      raise SystemExit(f"worker for {count} devices failed (exit {proc.returncode})")


if __name__ == "__main__":
  main()
