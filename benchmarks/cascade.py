"""Benchmark: a digits cascade (8x8 generator + 2x upscaler) against the direct 16x16 generator.

The configs of the embedded cascade (`configs/digits_8px_shortcut.py`,
`configs/digits_upscale_x2.py`) and of the direct generator (`configs/digits_shortcut.py`), with
freshly initialised weights (sampling time does not depend on the weights' values). Every case
generates `--num_images` images through `evaluators.generate.generate` (the path `eval.py` and
`--mode=cascade` use), guidance 1.5, compiled on one batch first; the cases are timed in
alternating rounds and the median is reported. The cascade's upscaler input is the generator's
output upsampled, as `--mode=cascade` builds it.

  python benchmarks/cascade.py [--num_images=1000] [--rounds=3] [--out=FILE]
"""

import argparse
import importlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import emit_json  # noqa: E402
from shortcut_jax import experiment
from shortcut_jax.data import low_res  # noqa: E402
from shortcut_jax.evaluators import generate as gen  # noqa: E402
from shortcut_jax.evaluators import conditions


def _stage(name):
  exp = experiment.build_experiment(importlib.import_module(f"configs.{name}").get_config())
  return exp, jax.jit(exp.init_state)(jax.random.PRNGKey(0)).ema_params


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_images", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  n = args.num_images
  direct, small, up = _stage("digits_shortcut"), _stage("digits_8px_shortcut"), _stage(
      "digits_upscale_x2")
  lr = np.zeros((n, 8, 8, 1), np.float32)
  up_cond = conditions.sample_cond(up[0], n, examples={"cond_image": low_res.upsample(lr, 2)})

  def run(stage, steps, cond=None):
    exp, params = stage
    return gen.generate(exp, params, num_images=n, num_steps=steps, cfg_scale=1.5,
                        batch_size=args.batch_size, cond=cond, progress=False)

  cases = {f"direct_16px_{s}_steps": (lambda s=s: run(direct, s)) for s in (1, 2, 4)}
  cases.update({f"generator_8px_{s}_steps": (lambda s=s: run(small, s)) for s in (1, 4)})
  cases["upscaler_x2_1_step"] = lambda: run(up, 1, up_cond)
  for fn in cases.values():  # Compile (every case's shapes) before timing.
    fn()
  times = {k: [] for k in cases}
  for _ in range(args.rounds):
    for k, fn in cases.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  seconds = {k: statistics.median(v) for k, v in times.items()}
  result = {"num_images": n, "rounds": args.rounds, "device": str(jax.devices()[0]),
            "seconds": seconds, "images_per_s": {k: n / v for k, v in seconds.items()}}
  for s in (1, 4):
    total = seconds[f"generator_8px_{s}_steps"] + seconds["upscaler_x2_1_step"]
    result[f"cascade_{s}_1_seconds"] = total
    result[f"cascade_{s}_1_vs_direct_1_step"] = total / seconds["direct_16px_1_steps"]
  emit_json(result, args.out)


if __name__ == "__main__":
  main()
