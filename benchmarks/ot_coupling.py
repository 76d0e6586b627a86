"""Host cost of sOT (`data.ot_coupling`): one assignment over a pool of K batches, per pool and
per training step (the pool's time / K), for pool x batch rows of a sample shape.

  python benchmarks/ot_coupling.py --pools=8,32 --batch=64 --shape=16,16,1      # the digits
  python benchmarks/ot_coupling.py --pools=8 --batch=256 --shape=32,32,4        # latents
  python benchmarks/ot_coupling.py --pools=8,32 --classes=10   # within each of 10 classes

Prints one JSON object per (pool, batch, shape): the rows, seconds per assignment (median of
`--repeats`), seconds per step, and how much closer the matched noise is (mean squared
image-noise distance, matched / independent). `--classes=C` draws a uniform label per row and
solves the assignment within each label (`objective.ot_within_class`).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shortcut_jax.data import ot_coupling  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pools", default="8,32")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--shape", default="16,16,1")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--classes", type=int, default=0, help="0: one label-blind assignment")
  args = parser.parse_args()
  shape = tuple(int(v) for v in args.shape.split(","))
  rng = np.random.default_rng(0)
  for pool in (int(p) for p in args.pools.split(",")):
    n = pool * args.batch
    times, ratios = [], []
    for _ in range(args.repeats):
      x = rng.uniform(-1, 1, size=(n, *shape)).astype(np.float32)
      e = rng.standard_normal(x.shape).astype(np.float32)
      labels = rng.integers(0, args.classes, size=n) if args.classes else None
      t0 = time.perf_counter()
      perm = ot_coupling.assign(x, e, labels)
      times.append(time.perf_counter() - t0)
      ratios.append(float(np.mean((x - e[perm]) ** 2) / np.mean((x - e) ** 2)))
    seconds = statistics.median(times)
    print(json.dumps({"pool": pool, "batch": args.batch, "shape": list(shape), "rows": n,
                      "classes": args.classes,
                      "seconds_per_assignment": round(seconds, 4),
                      "seconds_per_step": round(seconds / pool, 5),
                      "matched_over_independent_distance": round(statistics.median(ratios), 4)}))


if __name__ == "__main__":
  main()
