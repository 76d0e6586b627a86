"""Benchmark of one training step: this library's step vs the original's update (same process).

Prints one JSON object: the device, the measured (or given) peak, and per configuration the median
step time, images/s, XLA's FLOP count of the compiled step (`cost_analysis()['flops']`), the
achieved FLOP/s and its fraction of the peak, for

  * `ours`: `shortcut_jax.train.train_step.make_train_step` (state donated), the library's defaults
    (attention_impl='xla');
  * `original`: `benchmarks/original_reference.py`, the original's update re-implemented with
    the same structure and cost (einsum attention, activations, full-batch flow targets, ...);
  * `fwd_bwd`: the bare forward + backward pass (gradient of the MSE on the whole batch, no
    targets, no optimizer), the floor of any training step.

The three are timed interleaved (one step of each in turn), so that load from other processes
on a shared machine hits them alike. Sizes: `small` (hidden 384, depth 6, heads 6, patch 2,
16x16x1 images, batch 64), `B` (DiT-B/2) and `XL` (DiT-XL/2) on 32x32x4 latents (GPU only:
they take minutes per step on a CPU).

  python benchmarks/train_step.py                       # small, shortcut+naive, float32+bfloat16
  python benchmarks/train_step.py --sizes=small,B,XL    # on a GPU
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

import original_reference as orig  # noqa: E402
from shortcut_jax import objectives  # noqa: E402
from shortcut_jax.train import train_state as train_state_lib  # noqa: E402
from shortcut_jax.train import train_step as train_step_lib  # noqa: E402
from shortcut_jax.models import dit as dit_lib  # noqa: E402
from common import emit_json  # benchmarks/ is on sys.path when a script runs

SIZES = {
    # name: (hidden, depth, heads, patch, image (H, W, C), default batch)
    "small": (384, 6, 6, 2, (16, 16, 1), 64),
    "B": (768, 12, 12, 2, (32, 32, 4), 256),
    "XL": (1152, 28, 16, 2, (32, 32, 4), 256),
}

# Dense peak FLOP/s by device kind (substring match, first hit): (float32, bfloat16).
GPU_PEAKS = [
    ("H200", (67e12, 989e12)),
    ("H100 PCIe", (51e12, 756e12)),
    ("H100", (67e12, 989e12)),  # SXM
    ("A100", (19.5e12, 312e12)),
    ("L4", (30e12, 121e12)),
    ("A10", (31e12, 125e12)),
    ("V100", (15.7e12, 125e12)),
    ("TPU v4", (275e12, 275e12)),
    ("TPU v5 lite", (197e12, 197e12)),
    ("TPU v5", (459e12, 459e12)),
]


def flops_of(compiled):
  """XLA's FLOP count of a compiled function (cost_analysis is a dict, or a list of one)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  value = (cost or {}).get("flops")
  return float(value) if value is not None and value > 0 else None


def measure_matmul_peak(dtype, n=2048, reps=5):
  """FLOP/s of an n^3 matmul (median of `reps`), the CPU reference peak."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times)


def device_peaks(args):
  dev = jax.devices()[0]
  if args.peak_gflops:
    p = args.peak_gflops * 1e9
    return {"float32": p, "bfloat16": p}, "given by --peak_gflops"
  if dev.platform == "cpu":
    return ({"float32": measure_matmul_peak(jnp.float32),
             "bfloat16": measure_matmul_peak(jnp.bfloat16)},
            "measured: 2048^3 matmul in this process")
  for key, (f32, bf16) in GPU_PEAKS:
    if key.lower() in dev.device_kind.lower():
      return {"float32": f32, "bfloat16": bf16}, f"table entry {key!r} (dense)"
  return {"float32": None, "bfloat16": None}, f"unknown device kind {dev.device_kind!r}"


def objective_config(name, batch):
  return dict(name=name, denoise_timesteps=128, bootstrap_every=8, bootstrap_ema=True,
              bootstrap_dt_bias=0, bootstrap_cfg=False, cfg_scale=1.5, class_dropout_prob=0.1,
              faithful=False, batch_size=batch)


def build(size, objective_name, dtype, num_classes, attention_impl):
  hidden, depth, heads, patch, image_shape, _ = SIZES[size]
  objective = objectives.get_objective(objective_name)
  module = dit_lib.DiT(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                       mlp_ratio=4.0, out_channels=image_shape[-1], class_dropout_prob=0.1,
                       num_classes=num_classes, ignore_dt=not objective.uses_level,
                       dtype=jnp.dtype(dtype), attention_impl=attention_impl)
  return objective, module, image_shape


def time_interleaved(fns, warmup, steps):
  """Runs each fn once per round (blocking), `warmup` + `steps` rounds.

  Returns per-fn lists of wall-clock seconds and of this process's CPU seconds (all threads;
  on a CPU shared with other processes, CPU time is much less disturbed than wall time).
  """
  times = {name: [] for name in fns}
  cpu_times = {name: [] for name in fns}
  for r in range(warmup + steps):
    for name, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      fn()
      dt, dc = time.perf_counter() - t0, time.process_time() - c0
      if r >= warmup:
        times[name].append(dt)
        cpu_times[name].append(dc)
  return times, cpu_times


def bench_one(size, objective_name, dtype, args, peaks):
  batch = args.batch or SIZES[size][5]
  num_classes = 10 if size == "small" else 1000
  objective, module, image_shape = build(size, objective_name, dtype, num_classes,
                                         args.attention_impl)
  ocfg = objective_config(objective_name, batch)
  rng = jax.random.PRNGKey(0)
  params = dit_lib.init_params(module, rng, image_shape)
  data_rng = np.random.default_rng(0)
  images = jnp.asarray(data_rng.uniform(-1, 1, (batch, *image_shape)), jnp.float32)
  labels = jnp.asarray(data_rng.integers(0, num_classes, (batch,)), jnp.int32)
  batch_dict = {"image": images, "label": labels}

  # Ours.
  tx, lr_schedule = train_state_lib.make_optimizer(
      type("O", (), dict(lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_steps=0,
                         schedule="constant"))(), max_steps=1000)
  model = dit_lib.velocity_model(module)
  step_fn = train_step_lib.make_train_step(model, objective, tx, lr_schedule, ocfg, 0.999)
  holder = {"state": train_state_lib.create_train_state(jax.tree.map(jnp.array, params), tx,
                                                       jax.random.PRNGKey(1))}
  ours_compiled = step_fn.lower(holder["state"], batch_dict).compile()

  def run_ours():
    holder["state"], metrics = ours_compiled(holder["state"], batch_dict)
    jax.block_until_ready((holder["state"], metrics))

  fns = {"ours": run_ours}
  compiled = {"ours": ours_compiled}

  # The original's update.
  if not args.no_original:
    omodule = orig.original_module(module)
    otx, olr = orig.original_optimizer()
    ocfg_orig = dict(train_type=objective_name, batch_size=batch, num_classes=num_classes,
                     target_update_rate=0.999, **{k: v for k, v in ocfg.items()
                                                  if k not in ("name", "faithful", "batch_size")})
    update = orig.make_original_update(omodule, otx, olr, ocfg_orig)
    oholder = {"state": orig.create_state(jax.tree.map(jnp.array, params), otx,
                                          jax.random.PRNGKey(1))}
    orig_compiled = update.lower(oholder["state"], images, labels).compile()

    def run_orig():
      oholder["state"], info = orig_compiled(oholder["state"], images, labels)
      jax.block_until_ready((oholder["state"], info))

    fns["original"] = run_orig
    compiled["original"] = orig_compiled

  # Bare forward + backward: gradient of the MSE on the whole batch.
  if not args.no_fwd_bwd:
    t = jnp.asarray(data_rng.uniform(0, 1, (batch,)), jnp.float32)
    level = jnp.full((batch,), 7, jnp.int32)
    target = jnp.asarray(data_rng.standard_normal((batch, *image_shape)), jnp.float32)

    def mse_grad(p, x, tt, lv, y, tgt):
      def loss(pp):
        out = module.apply({"params": pp}, x, tt, lv, y, train=True).astype(jnp.float32)
        return jnp.mean(jnp.square(out - tgt))
      return jax.grad(loss)(p)

    fb_compiled = jax.jit(mse_grad).lower(params, images, t, level, labels, target).compile()

    def run_fb():
      jax.block_until_ready(fb_compiled(params, images, t, level, labels, target))

    fns["fwd_bwd"] = run_fb
    compiled["fwd_bwd"] = fb_compiled

  times, cpu_times = time_interleaved(fns, args.warmup, args.steps)
  peak = peaks[dtype]
  out = {"size": size, "objective": objective_name, "compute_dtype": dtype,
         "param_dtype": "float32", "batch": batch, "image_shape": list(image_shape),
         "num_params": int(sum(x.size for x in jax.tree.leaves(params)))}
  for name, ts in times.items():
    med = statistics.median(ts)
    flops = flops_of(compiled[name])
    out[name] = {
        "median_s": round(med, 4), "min_s": round(min(ts), 4), "max_s": round(max(ts), 4),
        "images_per_s": round(batch / med, 2),
        "xla_flops": flops,
        "achieved_flops_per_s": None if flops is None else flops / med,
        "fraction_of_peak": None if (flops is None or not peak) else round(flops / med / peak, 4),
        "times_s": [round(x, 4) for x in ts],
        "median_cpu_s": round(statistics.median(cpu_times[name]), 4),
    }
  if "original" in out:
    out["speedup_vs_original"] = round(out["original"]["median_s"] / out["ours"]["median_s"], 3)
    out["speedup_vs_original_cpu_time"] = round(
        out["original"]["median_cpu_s"] / out["ours"]["median_cpu_s"], 3)
  if "fwd_bwd" in out:
    out["ours_overhead_over_fwd_bwd_s"] = round(out["ours"]["median_s"] - out["fwd_bwd"]["median_s"], 4)
    if "original" in out:
      out["original_overhead_over_fwd_bwd_s"] = round(
          out["original"]["median_s"] - out["fwd_bwd"]["median_s"], 4)
  out["attention_impl"] = {"ours": args.attention_impl, "original": "einsum",
                           "fwd_bwd": args.attention_impl}
  analysis = ours_compiled.memory_analysis()
  stats = jax.devices()[0].memory_stats() or {}  # None on CPU.
  out["memory"] = {
      "ours_temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
      "ours_argument_bytes": None if analysis is None else int(analysis.argument_size_in_bytes),
      # The allocator's peak over this process so far (every size measured before included).
      "device_peak_bytes_so_far": stats.get("peak_bytes_in_use")}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default=None, help="comma list of small,B,XL (default: small on CPU, "
                 "small,B,XL on an accelerator)")
  p.add_argument("--objectives", default="shortcut,naive")
  p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (params float32)")
  p.add_argument("--batch", type=int, default=0, help="override the size's default batch")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
  p.add_argument("--peak_gflops", type=float, default=0.0, help="device peak (else measured/table)")
  p.add_argument("--attention_impl", default="xla", help="ours: xla | einsum | cudnn | auto")
  p.add_argument("--no_original", action="store_true")
  p.add_argument("--no_fwd_bwd", action="store_true")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args()

  dev = jax.devices()[0]
  sizes = args.sizes or ("small" if dev.platform == "cpu" else "small,B,XL")
  peaks, peak_source = device_peaks(args)
  result = {
      "device": {"platform": dev.platform, "device_kind": dev.device_kind,
                 "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
                 "machine": platform.machine(), "jax": jax.__version__},
      "peak_flops_per_s": peaks, "peak_source": peak_source,
      "steps": args.steps, "warmup": args.warmup,
      "load_average_start": os.getloadavg(),
      "results": [],
  }
  for size in sizes.split(","):
    for objective_name in args.objectives.split(","):
      for dtype in args.dtypes.split(","):
        r = bench_one(size, objective_name, dtype, args, peaks)
        result["results"].append(r)
        print(json.dumps({k: r[k] for k in ("size", "objective", "compute_dtype")}
                         | {n: r[n]["median_s"] for n in ("ours", "original", "fwd_bwd") if n in r}
                         | {"speedup": r.get("speedup_vs_original"),
                            "speedup_cpu": r.get("speedup_vs_original_cpu_time")}), file=sys.stderr, flush=True)
  result["load_average_end"] = os.getloadavg()
  emit_json(result, args.out)


if __name__ == "__main__":
  main()
