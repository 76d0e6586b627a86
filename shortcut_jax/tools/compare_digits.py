"""One table and one plot of FD-digits against sampling steps for several digits runs.

  python -m shortcut_jax.tools.compare_digits \
      --runs=naive=workdirs/digits_naive,shortcut=workdirs/digits_shortcut,... \
      --plot=docs/digits_objectives.png [--table=docs/digits_objectives.md]

Each run is `NAME=WORKDIR`; its `WORKDIR/digits_metrics.json` (written by
`eval.py --mode=digits_metrics`) gives FD-digits and class accuracy per step budget, and every
`WORKDIR/digits_metrics_seed{N}.json` (the same command with `--seed=N`) adds repeats: a budget
with several seeds is reported as mean ± standard deviation (ddof=1) over them. A run may also
name a metrics JSON file directly (`NAME=path/to/file.json`, e.g. a result kept from an earlier
machine). `NAME=W1+W2+W3` pools separately trained models (training seeds: each workdir's
seed-0 evaluation is one repeat; their sampling-seed files are not used). The table (Markdown)
goes to stdout and to `--table`; the plot (log-log: FD-digits against steps, one line per run,
the held-out split's floor dashed) to `--plot`. Workdirs, metrics files, `--plot` and
`--table` may be remote (gs://...): they are read and written through `shortcut_jax.storage`.
"""

import io
import os
import re
import sys
from typing import Dict, List, Mapping, Sequence, Tuple

from absl import flags
import numpy as np

from shortcut_jax import console
from shortcut_jax import storage

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "NAME=WORKDIR (or NAME=metrics.json, or NAME=W1+W2+... for "
                  "training seeds), in table order.")
flags.DEFINE_string("plot", None, "PNG to write (FD-digits against steps, log scale).")
flags.DEFINE_string("table", None, "Markdown file to write the table to (also printed).")

METRICS_FILE = "digits_metrics.json"
_SEED_FILE = re.compile(r"digits_metrics_seed(\d+)\.json")


def parse_runs(specs: Sequence[str]) -> List[Tuple[str, str]]:
  """['name=path', ...] -> [(name, path)]; raises ValueError on a malformed entry."""
  out = []
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--runs entries are NAME=WORKDIR, got {spec!r}")
    out.append((name, path))
  return out


def metrics_files(path: str) -> Dict[int, str]:
  """Seed -> metrics JSON of a workdir (seed 0: digits_metrics.json), or {0: path} for a file."""
  if storage.isfile(path):
    return {0: path}
  if not storage.isdir(path):
    raise FileNotFoundError(f"{path}: no such workdir or metrics file")
  files = {}
  for name in storage.listdir(path):
    seed = _SEED_FILE.fullmatch(name)
    if name == METRICS_FILE or seed:
      files[int(seed.group(1)) if seed else 0] = storage.join(path, name)
  if not files:
    raise FileNotFoundError(f"{path} holds no {METRICS_FILE}: run `python eval.py "
                            f"--workdir={path} --mode=digits_metrics`")
  return files


def _read(files: Sequence[str]) -> Dict:
  """{'steps': {n: {'fd': [per file], 'accuracy': [per file]}}, 'floor': fd of held-out}."""
  steps, floor = {}, None
  for f in files:
    m = storage.read_json(f)
    floor = m.get("held_out_test_split", {}).get("fd_digits", floor)
    for n, v in m["steps"].items():
      s = steps.setdefault(int(n), {"fd": [], "accuracy": []})
      s["fd"].append(float(v["fd_digits"]))
      if v.get("accuracy") is not None:
        s["accuracy"].append(float(v["accuracy"]))
  return {"steps": dict(sorted(steps.items())), "floor": floor}


def collect(path: str) -> Dict:
  """A run's metrics (`_read`'s dict plus 'repeats': what its repeats are): one workdir's
  sampling seeds, or for 'W1+W2+...' the seed-0 results of separately trained models."""
  paths = path.split("+")
  if len(paths) == 1:
    out = _read([f for _, f in sorted(metrics_files(path).items())])
    return dict(out, repeats="sampling seeds")
  files = []
  for p in paths:
    found = metrics_files(p)
    if 0 not in found:
      raise FileNotFoundError(f"{p} holds no {METRICS_FILE} (the seed-0 evaluation)")
    files.append(found[0])
  return dict(_read(files), repeats="training seeds")


def _cell(values: Sequence[float], fmt: str, scale: float = 1.0) -> str:
  if not values:
    return "–"
  v = np.asarray(values) * scale
  if len(v) == 1:
    return format(v[0], fmt)
  return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def table(results: Mapping[str, Dict]) -> str:
  """Markdown: one row per run, one column per step budget, 'FD-digits (accuracy %)'; a cell
  with several repeats is 'mean ± std (mean ± std%, n sampling seeds)' (or training seeds)."""
  budgets = sorted({n for r in results.values() for n in r["steps"]})
  lines = ["| objective | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in budgets)
           + " |", "|---" * (len(budgets) + 1) + "|"]
  for name, r in results.items():
    cells = []
    for n in budgets:
      s = r["steps"].get(n)
      seeds = ("" if s is None or len(s["fd"]) < 2
               else f", {len(s['fd'])} {r.get('repeats', 'seeds')}")
      cells.append("–" if s is None else
                   f"{_cell(s['fd'], '.2f')} ({_cell(s['accuracy'], '.1f', 100.0)}%{seeds})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: Mapping[str, Dict], out: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  floors = []
  for name, r in results.items():
    n = np.asarray(list(r["steps"]))
    fd = np.asarray([np.mean(s["fd"]) for s in r["steps"].values()])
    ax.plot(n, fd, marker="o", label=name)
    if r["floor"] is not None:
      floors.append(r["floor"])
  if floors:
    ax.axhline(float(np.mean(floors)), color="grey", linestyle="--", linewidth=1,
               label="held-out split")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sampling steps")
  ax.set_ylabel("FD-digits (lower is better)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, dpi=120, format=os.path.splitext(out)[1][1:] or "png")
  plt.close(fig)
  storage.write_bytes(out, image.getvalue())


def main(argv):
  del argv
  if not FLAGS.runs:
    sys.exit("--runs=NAME=WORKDIR[,NAME=WORKDIR...] is required")
  try:
    results = {name: collect(path) for name, path in parse_runs(FLAGS.runs)}
  except (ValueError, FileNotFoundError) as e:
    sys.exit(str(e))
  text = table(results)
  print(text)
  if FLAGS.table:
    storage.write_text(FLAGS.table, text + "\n")
  if FLAGS.plot:
    plot(results, FLAGS.plot)
    print(f"plot: {FLAGS.plot}")


if __name__ == "__main__":
  console.run(main)
