"""Train-step time of each objective relative to flow matching (`naive`), on the digits default.

Every variant is the experiment `configs/digits_shortcut.py` builds (DiT hidden 128, depth 4,
patch 2, 16x16x1 digits, batch 64, float32) with `objective.name` (and, after a colon, extra
`section.key=value` overrides joined by '+') changed, so the network, batch and optimizer are
the same for all; the configs of the other objectives set only these fields too. Steps are timed
interleaved (one step of each variant in turn, after a warm-up), so load from other processes
hits all variants alike. Prints one JSON object: per variant the median / min step time, images/s
and the median ratio to `naive`.

  python benchmarks/objective_step.py
  python benchmarks/objective_step.py --variants=naive,shortcut,homo:model.acceleration=network
"""

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from shortcut_jax import experiment
from shortcut_jax.train import train_step as train_step_lib  # noqa: E402

DEFAULT_VARIANTS = ("naive,shortcut,meanflow,"
                    "homo:objective.path=smoothstep+model.acceleration=head,"
                    "homo:objective.path=smoothstep+model.acceleration=network")


def _parse_value(text):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"True": True, "False": False}.get(text, text)


def variant_config(spec: str, base: str):
  """The digits config with `objective.name` and the overrides of `spec` ('name:a.b=v+c.d=w')."""
  name, _, overrides = spec.partition(":")
  c = importlib.import_module(f"configs.{base}").get_config()
  c.unlock()
  c.objective.name = name
  for item in filter(None, overrides.split("+")):
    key, _, value = item.partition("=")
    section, field = key.split(".")
    c[section][field] = _parse_value(value)
  return c


def build_step(spec: str, base: str):
  c = variant_config(spec, base)
  exp = experiment.build_experiment(c)
  state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
  step = train_step_lib.make_train_step(exp.model, exp.objective, exp.tx, exp.lr_schedule,
                                        c.objective, c.optim.ema_rate)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (c.batch_size,) + exp.image_shape),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, c.data.num_classes, c.batch_size), jnp.int32)}
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)
  return run, c.batch_size, sum(x.size for x in jax.tree.leaves(state.params))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variants", default=DEFAULT_VARIANTS)
  parser.add_argument("--config", default="digits_shortcut")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  specs = args.variants.split(",")
  runs = {}
  for spec in specs:
    t0 = time.perf_counter()
    runs[spec] = build_step(spec, args.config)
    for _ in range(args.warmup):
      runs[spec][0]()
    print(f"{spec}: compiled and warmed up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
  times = {spec: [] for spec in specs}
  for _ in range(args.steps):
    for spec in specs:
      t0 = time.perf_counter()
      runs[spec][0]()
      times[spec].append(time.perf_counter() - t0)
  base = statistics.median(times[specs[0]])
  out = {"benchmark": "objective_step", "config": args.config, "device": jax.devices()[0].device_kind,
         "platform": platform.platform(), "cpu_count": os.cpu_count(), "steps": args.steps,
         "reference": specs[0], "variants": {}}
  for spec in specs:
    median = statistics.median(times[spec])
    out["variants"][spec] = {
        "median_s": median, "min_s": min(times[spec]),
        "images_per_s": runs[spec][1] / median, "params": int(runs[spec][2]),
        "ratio_to_reference": median / base}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
