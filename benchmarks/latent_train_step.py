"""Benchmark: the training step with online VAE encoding against precomputed latents.

Both are `shortcut_jax.train.train_step.make_train_step` with a `latents.LatentEncoder` (state
donated), on the same DiT and VAE, timed interleaved (one step of each per round, as
benchmarks/train_step.py does, so that load from other processes hits them alike):

  * `online` (`data.latents='online'`, the original's way): the batch is pixels; the frozen
    VAE encodes it inside the step (posterior moments, then a sample);
  * `precomputed` (`data.latents='precomputed'`): the batch is the stored posterior moments
    (`latent_mean`, `latent_std`); the step only draws the sample;
  * `encode` (reference): the VAE's posterior moments alone, jitted (`VAE.posterior`), i.e.
    what the online step adds.

Sizes (DiT: hidden, depth, heads, patch; VAE; images; batch):
  * `tiny`: DiT 128/4/4/2, the tiny random VAE (`TINY_VAE_CONFIG`, factor 2), 32x32x3 images
    -> 16x16x4 latents, batch 16 (what a CPU does in seconds);
  * `sd128`: the same DiT, the real SD VAE architecture (`SD_VAE_CONFIG`, 83.7 M parameters,
    factor 8) at random weights, 128x128x3 images -> 16x16x4 latents, batch 8 (CPU: seconds
    per step);
  * `B`: DiT-B/2 and the real SD VAE on 256x256x3 -> 32x32x4, batch 256 (the paper's run;
    accelerator only).
The VAE's weights do not change its speed, so random weights stand in for sd-vae-ft-mse.

  python benchmarks/latent_train_step.py                       # tiny,sd128 on a CPU
  python benchmarks/latent_train_step.py --sizes=tiny,sd128,B  # on an accelerator
"""

import argparse
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import emit_json  # noqa: E402  benchmarks/ is on sys.path when a script runs
from train_step import flops_of, objective_config, time_interleaved  # noqa: E402
from shortcut_jax import config as config_lib  # noqa: E402
from shortcut_jax import latents as latents_lib  # noqa: E402
from shortcut_jax import objectives  # noqa: E402
from shortcut_jax.train import train_state as train_state_lib  # noqa: E402
from shortcut_jax.train import train_step as train_step_lib  # noqa: E402
from shortcut_jax.models import dit as dit_lib  # noqa: E402
from shortcut_jax.models import vae as vae_lib  # noqa: E402

SIZES = {
    # name: (hidden, depth, heads, patch, VAE config, image (H, W, C), default batch)
    "tiny": (128, 4, 4, 2, vae_lib.TINY_VAE_CONFIG, (32, 32, 3), 16),
    "sd128": (128, 4, 4, 2, vae_lib.SD_VAE_CONFIG, (128, 128, 3), 8),
    "B": (768, 12, 12, 2, vae_lib.SD_VAE_CONFIG, (256, 256, 3), 256),
}


def bench_one(size, dtype, args):
  hidden, depth, heads, patch, vae_config, image_shape, default_batch = SIZES[size]
  batch = args.batch or default_batch
  num_classes = 1000
  vae = vae_lib.random_vae(vae_config, seed=0, dtype=jnp.dtype(args.vae_dtype))
  latent_shape = tuple(vae.latent_shape(image_shape))
  objective = objectives.get_objective("shortcut")
  module = dit_lib.DiT(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                       mlp_ratio=4.0, out_channels=latent_shape[-1], class_dropout_prob=0.1,
                       num_classes=num_classes, ignore_dt=not objective.uses_level,
                       dtype=jnp.dtype(dtype))
  model = dit_lib.velocity_model(module)
  params = dit_lib.init_params(module, jax.random.PRNGKey(0), latent_shape)
  optim = config_lib.base_config().optim  # The defaults: AdamW lr 1e-4, weight decay 0.1.
  tx, lr_schedule = train_state_lib.make_optimizer(optim, max_steps=1000)
  ocfg = objective_config("shortcut", batch)

  data_rng = np.random.default_rng(0)
  images = jnp.asarray(data_rng.uniform(-1, 1, (batch, *image_shape)), jnp.float32)
  labels = jnp.asarray(data_rng.integers(0, num_classes, (batch,)), jnp.int32)
  mean, std = jax.block_until_ready(vae.posterior(images))  # What encode_dataset stores.
  batches = {"online": {"image": images, "label": labels},
             "precomputed": {"latent_mean": mean, "latent_std": std, "label": labels}}

  fns, compiled, holders = {}, {}, {}
  for mode, batch_dict in batches.items():
    encoder = latents_lib.LatentEncoder(vae=vae, mode=mode)
    step_fn = jax.jit(
        lambda state, b, p, encoder=encoder: train_step_lib.train_step(
            state, b, p, model=model, objective=objective, tx=tx, lr_schedule=lr_schedule,
            objective_config=ocfg, ema_rate=0.999, encoder=encoder),
        donate_argnums=(0,))
    holders[mode] = {"state": train_state_lib.create_train_state(
        jax.tree.map(jnp.array, params), tx, jax.random.PRNGKey(1))}
    compiled[mode] = step_fn.lower(holders[mode]["state"], batch_dict, vae.params).compile()

    def run(mode=mode, batch_dict=batch_dict):
      h = holders[mode]
      h["state"], metrics = compiled[mode](h["state"], batch_dict, vae.params)
      jax.block_until_ready((h["state"], metrics))
    fns[mode] = run

  encode = jax.jit(lambda p, x: vae.module.apply(
      {"params": p}, x, method=vae_lib.AutoencoderKL.encode_moments))
  compiled["encode"] = encode.lower(vae.params, images).compile()
  fns["encode"] = lambda: jax.block_until_ready(compiled["encode"](vae.params, images))

  times, cpu_times = time_interleaved(fns, args.warmup, args.steps)
  out = {"size": size, "dit": dict(hidden=hidden, depth=depth, heads=heads, patch=patch),
         "dit_compute_dtype": dtype, "vae_compute_dtype": args.vae_dtype,
         "vae": {k: v for k, v in vae.config.to_dict().items()
                 if k in ("block_out_channels", "layers_per_block", "norm_num_groups")},
         "vae_num_params": int(sum(x.size for x in jax.tree.leaves(vae.params))),
         "batch": batch, "image_shape": list(image_shape), "latent_shape": list(latent_shape)}
  for name, ts in times.items():
    med = statistics.median(ts)
    flops = flops_of(compiled[name])
    out[name] = {"median_s": round(med, 4), "min_s": round(min(ts), 4),
                 "max_s": round(max(ts), 4), "steps_per_s": round(1 / med, 3),
                 "images_per_s": round(batch / med, 2),
                 "xla_gflops": None if flops is None else round(flops / 1e9, 2),
                 "times_s": [round(x, 4) for x in ts],
                 "median_cpu_s": round(statistics.median(cpu_times[name]), 4)}
  out["online_over_precomputed"] = round(out["online"]["median_s"] / out["precomputed"]["median_s"], 3)
  out["online_over_precomputed_cpu_time"] = round(
      out["online"]["median_cpu_s"] / out["precomputed"]["median_cpu_s"], 3)
  out["online_minus_precomputed_s"] = round(
      out["online"]["median_s"] - out["precomputed"]["median_s"], 4)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default=None, help="comma list of tiny,sd128,B (default: tiny,sd128 "
                 "on a CPU, all three on an accelerator)")
  p.add_argument("--dtypes", default=None, help="DiT compute dtypes (default: float32 on a CPU, "
                 "bfloat16 on an accelerator)")
  p.add_argument("--vae_dtype", default=None, help="VAE compute dtype (default as --dtypes)")
  p.add_argument("--batch", type=int, default=0, help="override the size's default batch")
  p.add_argument("--steps", type=int, default=5, help="timed rounds")
  p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
  p.add_argument("--out", default=None, help="also write the JSON to this file")
  args = p.parse_args()

  dev = jax.devices()[0]
  cpu = dev.platform == "cpu"
  sizes = args.sizes or ("tiny,sd128" if cpu else "tiny,sd128,B")
  dtypes = args.dtypes or ("float32" if cpu else "bfloat16")
  args.vae_dtype = args.vae_dtype or dtypes.split(",")[0]
  result = {"device": {"platform": dev.platform, "device_kind": dev.device_kind,
                       "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
                       "machine": platform.machine(), "jax": jax.__version__},
            "steps": args.steps, "warmup": args.warmup,
            "load_average_start": os.getloadavg(), "results": []}
  for size in sizes.split(","):
    for dtype in dtypes.split(","):
      r = bench_one(size, dtype, args)
      result["results"].append(r)
      print({"size": size, "dtype": dtype, **{n: r[n]["median_s"] for n in
             ("online", "precomputed", "encode")}, "ratio": r["online_over_precomputed"]},
            file=sys.stderr, flush=True)
  result["load_average_end"] = os.getloadavg()
  emit_json(result, args.out)


if __name__ == "__main__":
  main()
