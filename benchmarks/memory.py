"""Per-device memory of the train state and of the compiled train step, under dp and fsdp.

Nothing is trained and no state is allocated: the state's shapes come from `jax.eval_shape`,
its placement from `shortcut_jax.parallel.sharding`, and the step's memory from XLA's analysis of the
compiled program (`jit(...).lower(...).compile().memory_analysis()`), which is per device for
an SPMD program. Run it on faked CPU devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory.py

Prints one JSON object (also written to --out when given): for each model and mode, the bytes
one device holds of the parameters, the EMA parameters and the optimizer state, and the
compiled step's argument / output / temporary (activations, gathered weights, gradients)
bytes. The results are recorded in docs/benchmarks.md ("Memory (sharding)").

Layer layouts and remat policies (docs/benchmarks.md, "Scanned layers"): `--layouts=unrolled,scanned
--remat=none,full,dots` measures every combination (compile time and memory), and with both
layouts the largest difference between the two layouts' outputs on the same weights
(`outputs_max_abs_diff`: the unrolled DiT's random weights, perturbed, converted by
`core.layer_stack`; a forward pass of 2 examples):

  python benchmarks/memory.py --models=DiT-XL/2 --modes=dp --layouts=unrolled,scanned \
      --remat=none,full,dots
"""

import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from shortcut_jax import config as config_lib  # noqa: E402
from shortcut_jax.parallel import sharding as sharding_lib  # noqa: E402
from shortcut_jax.train import train_step as train_step_lib  # noqa: E402
from shortcut_jax import experiment
from shortcut_jax.core import layer_stack  # noqa: E402
from shortcut_jax.models import dit  # noqa: E402
from common import emit_json  # benchmarks/ is on sys.path when a script runs

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["DiT-B/2", "DiT-XL/2"], "DiT presets.")
flags.DEFINE_list("modes", ["dp", "fsdp"], "Sharding modes (fsdp puts every device on `fsdp`).")
flags.DEFINE_integer("per_device_batch", 8, "Examples per device.")
flags.DEFINE_integer("image_size", 32, "Latent side (32x32x4 SD-VAE latents of 256x256 images).")
flags.DEFINE_integer("channels", 4, "Latent channels.")
flags.DEFINE_string("dtype", "bfloat16", "Compute dtype (parameters are float32).")
flags.DEFINE_list("layouts", ["unrolled"], "unrolled and/or scanned (model.scan_layers).")
flags.DEFINE_list("remat", ["none"], "model.remat policies: none, full, dots.")
flags.DEFINE_string("out", None, "Optional JSON output path.")

MIB = 2 ** 20


def measure(preset: str, mode: str, devices, layout: str = "unrolled", remat: str = "none") -> dict:
  """Memory figures of one model under one mode on `devices` (see the module docstring)."""
  n = len(devices)
  c = config_lib.base_config()
  c.model.update(**dit.DIT_PRESETS[preset], dtype=FLAGS.dtype, scan_layers=layout == "scanned",
                 remat=remat)
  c.data.update(name="imagenet256", image_size=FLAGS.image_size, num_classes=1000)
  c.objective.update(name="shortcut", bootstrap_cfg=True)
  c.batch_size = FLAGS.per_device_batch * n
  c.sharding = mode
  c.mesh.update(data=-1, fsdp=1) if mode == "dp" else c.mesh.update(data=1, fsdp=-1)
  exp = experiment.build_experiment(c, image_shape=(FLAGS.image_size, FLAGS.image_size,
                                                 FLAGS.channels))
  mesh = experiment.make_mesh(c, devices)
  abstract, shardings = experiment.sharded_abstract_state(exp, mesh)
  state_bytes = {
      "params": sharding_lib.bytes_per_device(abstract.params, shardings.params),
      "ema_params": sharding_lib.bytes_per_device(abstract.ema_params, shardings.ema_params),
      "opt_state": sharding_lib.bytes_per_device(abstract.opt_state, shardings.opt_state),
  }
  batch_sharding = sharding_lib.batch_sharding(mesh)
  shape = (c.batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  batch = {"image": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding),
           "label": jax.ShapeDtypeStruct(shape[:1], jnp.int32, sharding=batch_sharding)}
  step_fn = train_step_lib.make_train_step(
      exp.model, exp.objective, exp.tx, exp.lr_schedule, c.objective, c.optim.ema_rate,
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding_lib.replicated(mesh)))
  start = time.time()
  compiled = step_fn.lower(abstract, batch).compile()
  compile_s = time.time() - start
  stats = compiled.memory_analysis()
  num_params = sum(int(l.size) for l in jax.tree.leaves(abstract.params))
  out = {
      "model": preset, "mode": mode, "layout": layout, "remat": remat, "devices": n,
      "mesh": dict(mesh.shape),
      "global_batch": c.batch_size, "num_params": num_params,
      "state_bytes_per_device": dict(state_bytes, total=sum(state_bytes.values())),
      "step_bytes_per_device": {
          "argument": int(stats.argument_size_in_bytes), "output": int(stats.output_size_in_bytes),
          "alias": int(stats.alias_size_in_bytes), "temp": int(stats.temp_size_in_bytes),
          "generated_code": int(stats.generated_code_size_in_bytes)},
      "compile_s": round(compile_s, 1),
  }
  logging.info("%s %s %s remat=%s: state %.1f MiB/device, step temp %.1f MiB/device (compiled "
               "in %.0f s)", preset, mode, layout, remat, out["state_bytes_per_device"]["total"] / MIB,
               stats.temp_size_in_bytes / MIB, compile_s)
  return out


def layouts_difference(preset: str):
  """(the largest |unrolled - scanned| DiT output on the same perturbed weights, the largest
  |output|), 2 examples."""
  kw = dict(**dit.DIT_PRESETS[preset], out_channels=FLAGS.channels, class_dropout_prob=0.1,
            num_classes=1000, dtype=jnp.dtype(FLAGS.dtype))
  shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  unrolled, scanned = dit.DiT(**kw), dit.DiT(**kw, scan_layers=True)
  params = dit.init_params(unrolled, jax.random.PRNGKey(0), shape)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [l + 0.02 * jax.random.normal(k, l.shape)
                                     for l, k in zip(leaves, keys)])
  x = jax.random.normal(jax.random.PRNGKey(2), (2, *shape))
  args = (x, jnp.array([0.3, 0.8]), jnp.array([0, 3]), jnp.array([7, 1000]))
  out_u = jax.jit(unrolled.apply)({"params": params}, *args)
  out_s = jax.jit(scanned.apply)({"params": layer_stack.convert(params, True)}, *args)
  out_u, out_s = out_u.astype(jnp.float32), out_s.astype(jnp.float32)
  return float(jnp.max(jnp.abs(out_u - out_s))), float(jnp.max(jnp.abs(out_u)))


def main(argv):
  del argv
  devices = jax.devices()
  results = [measure(m, mode, devices, layout, remat) for m in FLAGS.models
             for mode in FLAGS.modes for layout in FLAGS.layouts for remat in FLAGS.remat]
  for model in FLAGS.models:
    if {"unrolled", "scanned"} <= set(FLAGS.layouts):
      diff, scale = layouts_difference(model)
      for r in results:
        if r["model"] == model:
          r.update(outputs_max_abs_diff=diff, outputs_max_abs=scale)
    by_mode = {r["mode"]: r for r in results
               if r["model"] == model and r["layout"] == FLAGS.layouts[0]
               and r["remat"] == FLAGS.remat[0]}
    if "dp" in by_mode and "fsdp" in by_mode:
      by_mode["fsdp"]["state_vs_dp"] = round(by_mode["fsdp"]["state_bytes_per_device"]["total"] /
                                             by_mode["dp"]["state_bytes_per_device"]["total"], 4)
  report = {"backend": jax.default_backend(), "device_count": len(devices),
            "jax": jax.__version__, "dtype": FLAGS.dtype,
            "per_device_batch": FLAGS.per_device_batch, "results": results}
  emit_json(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
