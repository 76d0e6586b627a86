"""Stable Diffusion VAE throughput: encode and decode images/s, float32 and bfloat16 compute.

  python benchmarks/vae.py [--image_size=256] [--batch_size=2] [--repeats=3]
                           [--dtypes=float32,bfloat16] [--out=F.json]

The real SD-VAE architecture (`SD_VAE_CONFIG`, 83.7 M parameters) with random weights (speed
does not depend on the values), float32 parameters. Per compute dtype: one warm-up call of
each function (its time, compilation included, is reported as `*_first_call_s`), then
`repeats` timed calls of `encode` (images -> posterior-mean latents) and `decode` (latents ->
images), each waited for with `block_until_ready`. Prints one JSON object with, per dtype,
the median and minimum seconds per call, images/s from the median, and XLA's FLOP count of
one call (`Lowered.cost_analysis`).
"""

import os
import statistics
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import emit_json  # noqa: E402  benchmarks/ is on sys.path when a script runs

from shortcut_jax.models import vae as vae_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 256, "Image side in pixels.")
flags.DEFINE_integer("batch_size", 2, "Images per call.")
flags.DEFINE_integer("repeats", 3, "Timed calls per function and dtype.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
flags.DEFINE_string("out", None, "Also write the JSON here.")


def _gflop(jitted, *args):
  try:
    cost = jitted.lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return round(float(cost["flops"]) / 1e9, 1)
  except Exception:  # pylint: disable=broad-except  # The count is informative only.
    return None


def _time(fn, arg, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(arg))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - t0)
  return first, times


def main(argv):
  del argv
  size, batch = FLAGS.image_size, FLAGS.batch_size
  base = vae_lib.random_vae(vae_lib.SD_VAE_CONFIG, seed=0)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)),
                       jnp.float32)
  result = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
            "image_size": size, "batch_size": batch, "repeats": FLAGS.repeats,
            "parameters": sum(int(p.size) for p in jax.tree.leaves(base.params))}
  for name in FLAGS.dtypes:
    vae = vae_lib.VAE(base.config, base.params, dtype=jnp.dtype(name))
    for what in ("encode", "decode"):
      # pylint: disable=protected-access
      if what == "encode":
        fn, arg, jitted = vae.encode, images, vae._moments
      else:
        fn, arg, jitted = vae.decode, vae.encode(images), vae._decode
      first, times = _time(fn, arg, FLAGS.repeats)
      median = statistics.median(times)
      result[f"{name}/{what}_first_call_s"] = round(first, 3)
      result[f"{name}/{what}_median_s"] = round(median, 3)
      result[f"{name}/{what}_min_s"] = round(min(times), 3)
      result[f"{name}/{what}_images_per_s"] = round(batch / median, 3)
      result[f"{name}/{what}_gflop_per_call"] = _gflop(jitted, vae.params, arg)
  emit_json(result, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
