"""Benchmark of sampling: this library's sampler (whole loop in one jit) vs the original's loop.

`ours` is `shortcut_jax.sampling.make_sampler` (a `lax.scan` over the steps inside one jitted
function; with guidance the conditional and unconditional velocities come from one doubled
call). `original` is `original_reference.original_sample`: a Python for-loop that calls a jitted
model function per step (passing the whole train state, as the original does), with the Euler
update as eager jnp ops and two model calls per step under guidance.

Small config (DiT hidden 384, depth 6, heads 6, patch 2, 16x16x1, 10 classes), a shortcut model
with random weights (the zero-initialised final layer is replaced by random values, so no
output is trivially zero). Cases: 1, 8 and 128 steps at batch 1 and 64 without guidance, and
with guidance (scale 1.5) at batch 1. Both functions are compiled before timing; the two are
timed alternately (one run of each per round), rounds limited by `--max_seconds_per_case`.

  python benchmarks/sample.py
  python benchmarks/sample.py --steps=1,8 --batches=1,64 --cfg_batches=
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import original_reference as orig  # noqa: E402
from shortcut_jax import sampling  # noqa: E402
from shortcut_jax.models import dit as dit_lib  # noqa: E402
from common import emit_json  # benchmarks/ is on sys.path when a script runs

DENOISE_TIMESTEPS = 128
NUM_CLASSES = 10


def random_params(module, image_shape, seed=0):
  """Initialised parameters with the zero-initialised layers filled with small random values."""
  params = dit_lib.init_params(module, jax.random.PRNGKey(seed), image_shape)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [jnp.where(x == 0, 0.02 * jax.random.normal(k, x.shape, x.dtype), x)
            if x.ndim >= 1 else x for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def parse_list(text, cast=int):
  return [cast(x) for x in text.split(",") if x.strip()]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", default="1,8,128")
  p.add_argument("--batches", default="1,64", help="batches sampled without guidance")
  p.add_argument("--cfg_batches", default="1", help="batches sampled with guidance")
  p.add_argument("--cfg_scale", type=float, default=1.5)
  p.add_argument("--dtype", default="float32", help="compute dtype (params float32)")
  p.add_argument("--attention_impl", default="xla", help="ours (the original: einsum)")
  p.add_argument("--max_rounds", type=int, default=10)
  p.add_argument("--max_seconds_per_case", type=float, default=90.0,
                 help="stop adding rounds once a case has used this much time (>= 1 round)")
  p.add_argument("--out", default=None)
  args = p.parse_args()

  image_shape = (16, 16, 1)
  module = dit_lib.DiT(patch_size=2, hidden_size=384, depth=6, num_heads=6, mlp_ratio=4.0,
                       out_channels=1, class_dropout_prob=0.1, num_classes=NUM_CLASSES,
                       ignore_dt=False, dtype=jnp.dtype(args.dtype),
                       attention_impl=args.attention_impl)
  omodule = orig.original_module(module)
  model = dit_lib.velocity_model(module)
  params = random_params(module, image_shape)
  tx = optax.chain(optax.adamw(1e-4))
  ostate = orig.create_state(params, tx, jax.random.PRNGKey(1))
  ocall = orig.make_original_call_model(omodule)

  cases = [(n, b, None) for b in parse_list(args.batches) for n in parse_list(args.steps)]
  cases += [(n, b, args.cfg_scale) for b in parse_list(args.cfg_batches)
            for n in parse_list(args.steps)]
  dev = jax.devices()[0]
  result = {
      "device": {"platform": dev.platform, "device_kind": dev.device_kind,
                 "cpu_count": os.cpu_count(), "machine": platform.machine(),
                 "jax": jax.__version__},
      "config": {"model": "DiT hidden 384, depth 6, heads 6, patch 2", "image_shape": image_shape,
                 "compute_dtype": args.dtype, "param_dtype": "float32",
                 "denoise_timesteps": DENOISE_TIMESTEPS,
                 "attention_impl": {"ours": args.attention_impl, "original": "einsum"}},
      "load_average_start": os.getloadavg(),
      "results": [],
  }
  rng = np.random.default_rng(0)
  for num_steps, batch, cfg in cases:
    x0 = jnp.asarray(rng.standard_normal((batch, *image_shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, (batch,)), jnp.int32)
    cond = {"label": labels}
    ours_fn = sampling.make_sampler(model, num_steps, DENOISE_TIMESTEPS, True, cfg)
    t0 = time.perf_counter()
    ours_compiled = ours_fn.lower(params, x0, cond).compile()
    ours_compile_s = time.perf_counter() - t0
    # Compile the original's per-step model call (one call; its first-step shapes are the same
    # for every step) and warm up the eager ops of its loop.
    t0 = time.perf_counter()
    orig.original_sample(ocall, ostate, x0, labels, num_steps=1,
                         denoise_timesteps=DENOISE_TIMESTEPS, uses_level=True, cfg_scale=cfg,
                         num_classes=NUM_CLASSES).block_until_ready()
    orig_compile_s = time.perf_counter() - t0
    ours_compiled(params, x0, cond).block_until_ready()

    def run_ours():
      return ours_compiled(params, x0, cond).block_until_ready()

    def run_orig():
      return orig.original_sample(ocall, ostate, x0, labels, num_steps=num_steps,
                                  denoise_timesteps=DENOISE_TIMESTEPS, uses_level=True,
                                  cfg_scale=cfg, num_classes=NUM_CLASSES).block_until_ready()

    times = {"ours": [], "original": []}
    cpu = {"ours": [], "original": []}
    spent = 0.0
    outputs = {}
    for _ in range(args.max_rounds):
      for name, fn in (("ours", run_ours), ("original", run_orig)):
        t0, c0 = time.perf_counter(), time.process_time()
        outputs[name] = fn()
        dt = time.perf_counter() - t0
        times[name].append(dt)
        cpu[name].append(time.process_time() - c0)
        spent += dt
      if spent >= args.max_seconds_per_case:
        break
    diff = float(jnp.max(jnp.abs(outputs["ours"] - outputs["original"])))
    entry = {"num_steps": num_steps, "batch": batch, "cfg_scale": cfg, "rounds": len(times["ours"]),
             "compile_s": {"ours": round(ours_compile_s, 2), "original": round(orig_compile_s, 2)},
             "max_abs_diff_ours_vs_original": diff}
    for name in times:
      med = statistics.median(times[name])
      entry[name] = {"median_s": round(med, 5), "min_s": round(min(times[name]), 5),
                     "median_cpu_s": round(statistics.median(cpu[name]), 5),
                     "images_per_s": round(batch / med, 2),
                     "times_s": [round(x, 5) for x in times[name]]}
    entry["speedup_vs_original"] = round(entry["original"]["median_s"] / entry["ours"]["median_s"], 3)
    entry["speedup_vs_original_cpu_time"] = round(
        entry["original"]["median_cpu_s"] / entry["ours"]["median_cpu_s"], 3)
    result["results"].append(entry)
    print(json.dumps({k: entry[k] for k in ("num_steps", "batch", "cfg_scale", "rounds",
                                            "speedup_vs_original")}
                     | {"ours_s": entry["ours"]["median_s"],
                        "original_s": entry["original"]["median_s"]}), file=sys.stderr, flush=True)
  result["load_average_end"] = os.getloadavg()
  emit_json(result, args.out)


if __name__ == "__main__":
  main()
