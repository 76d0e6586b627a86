"""Runs the test suite as several pytest processes side by side (what `scripts/test.sh` runs).

  python scripts/run_tests.py [--jobs=N] [pytest arguments ...]

Most tests are bound by XLA compiles, which use one core: on a 2-core machine two pytest
processes finish the suite in a little over half the time of one. The test files are handed out
to `--jobs` workers (default: the CPU count, at most 4) costliest first — the files that start
processes of their own alone, the others packed a few to a process by their measured times
(`COST`) — and each worker's output is kept in a log that is printed when its files fail.
Every process shares one XLA compilation cache (tests/conftest.py).
Test files named on the command line are run instead of the whole folder; any other argument
goes to every pytest call (e.g. `-k resume`, `--durations=10`, `-x`); `--jobs=1` runs one plain
pytest.

Exit status: 0 when every file passed (or had nothing selected), 1 otherwise.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
# Seconds per file for packing: the files that ran alone in the 2-worker run of 2026-12-01
# (files side by side) as measured, the others estimated from their group's measured time. Files that start processes of their own run alone; the others are packed into pytest
# processes of about UNIT_S seconds, largest first (every process pays ~6 s of imports, and the
# small units that are left over fill the gaps at the end). A file not listed counts DEFAULT_S.
COST = {
    "test_sharding.py": 254, "test_preemption.py": 172, "test_latent_runs.py": 130,
    "test_baselines.py": 148, "test_fid_eval.py": 94, "test_sharded_eval.py": 82,
    "test_homo.py": 81, "test_text_conditioning.py": 75, "test_latent_data.py": 73,
    "test_trainer.py": 63, "test_meanflow.py": 60, "test_coupling.py": 58,
    "test_pod_options.py": 53, "test_console.py": 53, "test_lpips.py": 50, "test_cascade.py": 40,
    "test_launch_checks.py": 30, "test_dit.py": 40, "test_data.py": 30, "test_fid.py": 15,
    "test_inception.py": 20, "test_legacy_checkpoint.py": 10, "test_loss_per_t.py": 15,
    "test_super_resolution.py": 35, "test_tiling.py": 5, "test_train_step.py": 25,
    "test_vae.py": 25, "test_objectives.py": 30, "test_sampling.py": 20, "test_sr_data.py": 15,
    "test_sr_quality.py": 5, "test_paths.py": 5, "test_run_tests.py": 1,
    "test_checkpoint_compat.py": 20, "test_conditioning.py": 25, "test_config.py": 5,
    "test_cpu_devices.py": 10, "test_damaged_checkpoint.py": 20, "test_compare_digits.py": 2,
    "test_original_targets.py": 60,  # Estimated: 14 DiT target programs, compiled once.
}
ALONE = ("test_sharding.py", "test_preemption.py", "test_sharded_eval.py", "test_fid_eval.py")
UNIT_S = 160
DEFAULT_S = 20
# pytest's last line: "12 passed, 1 skipped in 30.1s" (with -q) or "== ... in 30.1s ==".
_SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+|no tests ran)(?:, \d+ \w+)*) in [\d.]+s", re.M)


def cost(path: str) -> float:
  return COST.get(os.path.basename(path), DEFAULT_S)


def work_units(files):
  """[[file, ...], ...], the costliest unit first: ALONE files by themselves, the others packed
  first-fit (largest file first) into units of at most UNIT_S seconds (a larger file alone)."""
  alone = [[f] for f in files if os.path.basename(f) in ALONE]
  units = []
  for f in sorted((f for f in files if os.path.basename(f) not in ALONE),
                  key=lambda f: (-cost(f), f)):
    for u in units:
      if sum(map(cost, u)) + cost(f) <= UNIT_S:
        u.append(f)
        break
    else:
      units.append([f])
  return sorted(alone + units, key=lambda u: -sum(map(cost, u)))


def run_unit(unit, pytest_args, log_dir, index):
  log = os.path.join(log_dir, f"unit_{index:02d}.log")
  start = time.perf_counter()
  with open(log, "w") as f:
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *pytest_args, *unit], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  return unit, rc, time.perf_counter() - start, log


def count(summaries, word):
  return sum(int(m) for s in summaries for m in re.findall(rf"(\d+) {word}", s))


def summary_line(log):
  with open(log, errors="replace") as f:
    text = f.read()
  found = _SUMMARY.findall(text)
  return found[-1] if found else "no summary (see the log)"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
  args, pytest_args = parser.parse_known_args()
  # Test files named on the command line are the ones to run (default: all of tests/).
  named = [a for a in pytest_args if a.endswith(".py") and os.path.isfile(os.path.join(REPO, a))]
  pytest_args = [a for a in pytest_args if a not in named]
  files = named or sorted(os.path.join("tests", f) for f in os.listdir(TESTS)
                          if f.startswith("test_") and f.endswith(".py"))
  if args.jobs <= 1:
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *pytest_args, *(named or ["tests"])], cwd=REPO)
  units = work_units(files)
  cache = tempfile.mkdtemp(prefix="shortcut_jax_test_xla_cache_")
  log_dir = tempfile.mkdtemp(prefix="shortcut_jax_test_logs_")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  print(f"{len(files)} test files in {len(units)} pytest processes, {args.jobs} at a time")
  start, failed, summaries = time.perf_counter(), [], []
  try:
    with futures.ThreadPoolExecutor(args.jobs) as pool:
      jobs = [pool.submit(run_unit, u, pytest_args, log_dir, i) for i, u in enumerate(units)]
      for job in futures.as_completed(jobs):
        unit, rc, seconds, log = job.result()
        ok = rc in (0, 5)  # 5: nothing selected (e.g. by -k) in these files.
        names = " ".join(os.path.basename(u) for u in unit)
        summaries.append(summary_line(log))
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {names}: {summaries[-1]}",
              flush=True)
        if not ok:
          failed.append((names, log))
          with open(log, errors="replace") as f:
            print(f.read()[-20000:], flush=True)
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  wall = time.perf_counter() - start
  totals = ", ".join(f"{count(summaries, w)} {w}" for w in ("passed", "failed", "skipped",
                                                            "error"))
  print(f"{totals} in {wall:.1f} s ({len(units)} pytest processes, {args.jobs} at a time)")
  if failed:
    print(f"FAILED ({len(failed)} of {len(units)} processes) in {wall:.1f} s: "
          + ", ".join(n for n, _ in failed) + f"; logs in {log_dir}")
    return 1
  shutil.rmtree(log_dir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
