"""scripts/run_tests.py: every test file runs exactly once, and pytest's summaries are read."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("run_tests",
                                               os.path.join(REPO, "scripts", "run_tests.py"))
run_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_tests)


def test_every_file_runs_once_and_units_are_packed_by_cost():
  files = sorted(os.path.join("tests", f) for f in os.listdir(os.path.join(REPO, "tests"))
                 if f.startswith("test_") and f.endswith(".py"))
  units = run_tests.work_units(files)
  flat = [f for u in units for f in u]
  assert sorted(flat) == files and len(flat) == len(set(flat))
  costs = [sum(map(run_tests.cost, u)) for u in units]
  assert costs == sorted(costs, reverse=True)  # The costliest start first.
  for u, c in zip(units, costs):
    names = {os.path.basename(f) for f in u}
    assert len(u) == 1 or (c <= run_tests.UNIT_S and not names & set(run_tests.ALONE))
  # Packing saves processes: fewer units than files, and (first fit) at most one packed unit
  # is left half full or less.
  assert len(units) < len(files) / 2
  packed = [c for u, c in zip(units, costs) if os.path.basename(u[0]) not in run_tests.ALONE]
  assert sum(c <= run_tests.UNIT_S / 2 for c in packed) <= 1
  # Every file named in COST is a real test file (a renamed file would lose its measured time).
  assert set(run_tests.COST) <= {os.path.basename(f) for f in files}
  assert set(run_tests.ALONE) <= set(run_tests.COST)


def test_summaries_are_read_and_counted(tmp_path):
  log = tmp_path / "a.log"
  log.write_text("....F.\nFAILED tests/x.py::t\n3 failed, 12 passed, 1 skipped in 30.12s\n")
  line = run_tests.summary_line(str(log))
  assert line == "3 failed, 12 passed, 1 skipped"
  (tmp_path / "b.log").write_text("======== 7 passed, 2 deselected in 1.5s ========\n")
  lines = [line, run_tests.summary_line(str(tmp_path / "b.log"))]
  assert run_tests.count(lines, "passed") == 19 and run_tests.count(lines, "failed") == 3
  (tmp_path / "c.log").write_text("Traceback ...\n")
  assert "no summary" in run_tests.summary_line(str(tmp_path / "c.log"))
