"""`tools.compare_digits`: seeds collected per budget, table cells recomputed here, the plot."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from shortcut_jax.tools import compare_digits as cd


def _write(path, steps, floor=3.9):
  with open(path, "w") as f:
    json.dump({"held_out_test_split": {"fd_digits": floor, "accuracy": 0.99},
               "steps": {str(n): {"fd_digits": fd, "accuracy": acc}
                         for n, (fd, acc) in steps.items()}}, f)


def test_table_reports_seed_means_and_plot_is_written(tmp_path):
  rng = np.random.default_rng(0)
  a = tmp_path / "a"
  a.mkdir()
  _write(a / "digits_metrics.json", {1: (20.0, 0.9), 4: (8.0, 0.97), 128: (5.5, 0.99)})
  seeds = {0: 20.0}
  for seed in (1, 2):
    seeds[seed] = float(rng.uniform(15, 25))
    _write(a / f"digits_metrics_seed{seed}.json", {1: (seeds[seed], 0.8 + 0.05 * seed)})
  b = tmp_path / "b.json"  # A metrics file named directly.
  _write(b, {1: (10.04, 0.976), 4: (7.21, 0.989)})

  results = {name: cd.collect(path) for name, path in cd.parse_runs([f"A={a}", f"B={b}"])}
  assert results["A"]["steps"][1]["fd"] == [seeds[0], seeds[1], seeds[2]]
  text = cd.table(results).splitlines()
  assert text[0] == "| objective | 1 step | 4 steps | 128 steps |"
  fd = np.array(list(seeds.values()))
  acc = np.array([0.9, 0.85, 0.9]) * 100
  assert text[2] == (
      f"| A | {fd.mean():.2f} ± {fd.std(ddof=1):.2f} "
      f"({acc.mean():.1f} ± {acc.std(ddof=1):.1f}%, 3 sampling seeds) | 8.00 (97.0%) | 5.50 (99.0%) |")
  assert text[3] == "| B | 10.04 (97.6%) | 7.21 (98.9%) | – |"

  # Training seeds: each model's seed-0 file is one repeat; A's sampling seeds stay out.
  c = tmp_path / "c"
  c.mkdir()
  _write(c / "digits_metrics.json", {1: (12.0, 0.95), 4: (7.0, 0.99)})
  pooled = cd.collect(f"{a}+{b}+{c}")
  assert pooled["steps"][1]["fd"] == [20.0, 10.04, 12.0] and pooled["steps"][4]["fd"] == [
      8.0, 7.21, 7.0]
  row = cd.table({"P": pooled}).splitlines()[2]
  fd = np.array([20.0, 10.04, 12.0])
  assert row.startswith(f"| P | {fd.mean():.2f} ± {fd.std(ddof=1):.2f} (") and (
      "%, 3 training seeds) |" in row)
  only_seeds = tmp_path / "d"
  only_seeds.mkdir()
  _write(only_seeds / "digits_metrics_seed1.json", {1: (11.0, 0.9)})
  with pytest.raises(FileNotFoundError, match="seed-0"):
    cd.collect(f"{a}+{only_seeds}")

  out = tmp_path / "plot" / "fd.png"
  cd.plot(results, str(out))
  image = np.asarray(Image.open(out))
  assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 10


def test_bad_runs_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="NAME=WORKDIR"):
    cd.parse_runs(["just_a_path"])
  with pytest.raises(FileNotFoundError, match="no such workdir"):
    cd.collect(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="--mode=digits_metrics"):
    cd.collect(str(tmp_path / "empty"))
  assert not os.listdir(tmp_path / "empty")
