"""Checks the library's `faithful=True` objectives against training targets that the original
shortcut-models code computed itself.

  python -m shortcut_jax.tools.check_original_targets --fixture tests/testdata/original_targets

A fixture folder (`tests/testdata/original_targets/README.md` describes the one that ships) holds
what the original's `get_targets` functions returned for a list of cases, and everything they
were called with:

* `meta.json`: `dit_args` (the original `DiT`'s constructor arguments), `compute_dtype`,
  `matmul_precision`, and per case its `name`, the target function (`module`, e.g.
  `targets_shortcut.get_targets`), the `flags` it read (`batch_size`, `max_steps`, `model`
  options), the student's step (`student_step`) and whether a teacher state was passed
  (`uses_teacher`);
* `states.npz`: the networks' parameters, keys `<state>/<params|params_ema>/<path>` with `<path>`
  the `jax.tree_util.keystr` of the parameter in the original's tree, which is the library DiT's
  (`shortcut_jax.checkpoints.legacy`); states `student` and `teacher`;
* `inputs.npz`: `images`, `labels` and `key` (the raw key data passed as `get_targets`' key);
  a case with a smaller `batch_size` uses the first rows;
* `<case>.npz`: `x_t`, `v_t`, `t`, `dt_base` (the level) and `labels` (after dropout).

Each case is recomputed with the registered objective of the same name and `faithful=True`, on the
same images, labels, key, step and weights, by the library's DiT built with `dit_args` (its
`attention_impl='einsum'`, the original's attention arithmetic) in `compute_dtype` under
`matmul_precision`. The original's `get_targets` is called on the batch as it comes; the
shuffle and the cfg_scale = 0 label nulling of its update step happen before it, so the library is
run with `faithful_scope='get_targets'` (`objectives.flow_path.batch_for_targets`). Steps: the
fixture's step is the original's `train_state.step`; the library's is the number of updates made,
`step - ORIGINAL_START_STEP` (0 for progressive distillation, which the original starts from a
checkpoint whose step it resets to 0; 1 for consistency training, whose fresh train state starts at
step 1). Teachers: the fixture's teacher state goes through `objectives.teacher.teacher_weights`,
as a run's teacher does when it starts.

Tolerance. `t`, the level and the labels must be equal: they are integers, or integers divided by
powers of two, which float32 holds exactly. `x_t` and `v_t` must agree within

    |got - want| <= TOLERANCE_ULPS * eps32 * (max |want| of the case's array + 1)

with eps32 = 2^-23 (float32 rounding) and TOLERANCE_ULPS = 64 (`--tolerance-ulps`). Why: the
original and the library run the same float32 operations, but XLA may fuse and order them
differently (a fused multiply-add in x_t = (1 - (1 - 1e-5) t) x0 + t x1, another reduction order
in a matmul or a layer norm), and each such choice moves a result by about one ulp; a target chains
many of them (up to 16 DiT calls, an Euler step, and for the consistency objectives a division by
1 - t >= 1/M that magnifies the rounding of the difference above it). On the shipped fixture x_t
and every target agree to at most 1.5 ulps of their scale except the consistency objectives'
(up to ~13 ulps, from that division). 64 ulps (with the +1, an absolute floor of 64 eps32 ~ 8e-6
near zero) leaves room for that rounding on other machines and fixture sizes and is still far
below any real deviation: another key, row, level, label, teacher or guidance weight changes a
target by 1e-2 to 1, over a thousand times more. (A fixture computed in bfloat16 needs a tolerance
in bfloat16 ulps, 2^16 times more.)

Output: one line per case on stdout (name, the largest absolute difference of each field, `ok` or
`MISMATCH`, or `ERROR` and why for a case that cannot be run), a summary on stderr. Exit status
0 when every case agrees, 1 otherwise (a mismatching case, or one that cannot be run: an unknown
target function, a missing array or state), 2 when the folder is not such a fixture.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax import errors
from shortcut_jax import objectives
from shortcut_jax import storage
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.objectives import consistency, progressive
from shortcut_jax.objectives import teacher as teacher_lib

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23.
TOLERANCE_ULPS = 64
FIELDS = ("x_t", "v_t", "t", "level", "labels")
EXACT_FIELDS = ("t", "level", "labels")

# The original's target function -> (the library's objective, the original's train_state.step
# at the library's step 0).
TARGET_FUNCTIONS = {
    "targets_shortcut.get_targets": ("shortcut", 0),
    "targets_naive.get_targets": ("naive", 0),
    "targets_progressive.get_targets": ("progressive", progressive.ORIGINAL_START_STEP),
    "targets_consistency_distillation.get_targets": ("consistency-distillation", 0),
    "targets_consistency_training.get_targets": ("consistency",
                                                 consistency.ORIGINAL_START_STEP),
    "targets_livereflow.get_targets": ("livereflow", 0),
}

_KEY_PART = re.compile(r"\['([^']*)'\]")


class FixtureError(errors.UserError, ValueError):
  """The folder is not a fixture of this layout."""


@dataclasses.dataclass
class Fixture:
  directory: str
  meta: dict
  inputs: Dict[str, np.ndarray]
  states: Dict[str, dict]  # '<state>/<params|params_ema>' -> parameter tree.


@dataclasses.dataclass
class CaseResult:
  """One case: the largest absolute difference of each field, the allowed one, and whether the
  case agrees (`error` names a case that could not be run)."""
  name: str
  diffs: Dict[str, float]
  limits: Dict[str, float]
  error: Optional[str] = None

  @property
  def ok(self) -> bool:
    return self.error is None and all(self.diffs[f] <= self.limits[f] for f in FIELDS)

  def line(self) -> str:
    if self.error is not None:
      return f"{self.name:<30s} ERROR {self.error}"
    parts = [f"{f} {self.diffs[f]:.3g}" + ("" if self.diffs[f] <= self.limits[f] else
                                             f" (> {self.limits[f]:.3g})") for f in FIELDS]
    return f"{self.name:<30s} " + "  ".join(parts) + ("  ok" if self.ok else "  MISMATCH")


def unflatten(flat: Dict[str, np.ndarray]) -> dict:
  """{keystr path: array} -> nested dict (the original's parameter tree)."""
  tree: dict = {}
  for path, value in flat.items():
    keys = _KEY_PART.findall(path)
    if not keys or "".join(f"['{k}']" for k in keys) != path:
      raise FixtureError(f"states.npz: {path!r} is not a jax.tree_util.keystr path of dict keys")
    node = tree
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = np.asarray(value)
  return tree


def load_fixture(directory: str) -> Fixture:
  """Reads `meta.json`, `inputs.npz` and `states.npz` of a fixture folder."""
  directory = os.fspath(directory)
  for name in ("meta.json", "inputs.npz", "states.npz"):
    if not storage.isfile(storage.join(directory, name)):
      raise FixtureError(f"{directory} has no {name}: not an original-targets fixture")
  with storage.open(storage.join(directory, "meta.json")) as f:
    meta = json.load(f)
  with storage.open(storage.join(directory, "inputs.npz"), "rb") as f, np.load(f) as z:
    inputs = {k: z[k] for k in z.files}
  grouped: Dict[str, Dict[str, np.ndarray]] = {}
  with storage.open(storage.join(directory, "states.npz"), "rb") as f, np.load(f) as z:
    for k in z.files:
      state, which, path = k.split("/", 2)
      grouped.setdefault(f"{state}/{which}", {})[path] = z[k]
  return Fixture(directory, meta, inputs, {k: unflatten(v) for k, v in grouped.items()})


def objective_config(case: dict) -> dict:
  """The library's objective config for a case: the original's FLAGS, faithful, and the scope of
  its `get_targets` alone."""
  flags, model = case["flags"], case["flags"]["model"]
  name, _ = TARGET_FUNCTIONS[case["module"]]
  config = dict(name=name, faithful=True, faithful_scope="get_targets",
                schedule_steps=int(flags["max_steps"]), path="linear")
  for key in ("denoise_timesteps", "bootstrap_every", "bootstrap_dt_bias", "bootstrap_ema",
              "bootstrap_cfg", "class_dropout_prob", "cfg_scale"):
    if key in model:
      config[key] = model[key]
  return config


def build_model(meta: dict):
  """The library's DiT with the fixture's `dit_args` as a `VelocityModel`."""
  module = dit_lib.DiT(**meta["dit_args"], dtype=jnp.dtype(meta.get("compute_dtype", "float32")),
                       attention_impl="einsum")
  return dit_lib.velocity_model(module)


def library_targets(fixture: Fixture, case: dict, model=None) -> Dict[str, np.ndarray]:
  """The case computed by the library: {field: array} like the fixture's."""
  name, start_step = TARGET_FUNCTIONS[case["module"]]
  objective = objectives.get_objective(name)
  config = objective_config(case)
  b = int(case["flags"]["batch_size"])
  model = model if model is not None else build_model(fixture.meta)
  batch = {"image": jnp.asarray(fixture.inputs["images"][:b], jnp.float32),
           "label": jnp.asarray(fixture.inputs["labels"][:b], jnp.int32)}
  key = jnp.asarray(fixture.inputs["key"], jnp.uint32)
  step = jnp.int32(int(case.get("student_step", 0)) - start_step)
  if bool(case.get("uses_teacher", objective.needs_teacher)) != objective.needs_teacher:
    raise FixtureError(f"case {case['name']!r}: uses_teacher={case.get('uses_teacher')}, but the "
                       f"library's {name!r} {'needs' if objective.needs_teacher else 'has no'} "
                       "teacher")
  needed = ["student/params", "student/params_ema"]
  if objective.needs_teacher:
    needed += ["teacher/params", "teacher/params_ema"]
  missing = [k for k in needed if k not in fixture.states]
  if missing:
    raise FixtureError(f"case {case['name']!r}: states.npz has no {', '.join(missing)}")
  params, ema_params = fixture.states["student/params"], fixture.states["student/params_ema"]
  state = objective.init_state(params, config)
  if teacher_lib.TEACHER in state:  # As a run's teacher starts (`initialisation.start_from_teacher`).
    state[teacher_lib.TEACHER] = teacher_lib.teacher_weights(
        fixture.states["teacher/params"], fixture.states["teacher/params_ema"], config, name)
  if "phase" in state:
    state["phase"] = progressive.faithful_phase(step,
                                                progressive.ProgressiveSettings.from_config(config))

  def run(params, ema_params, batch, key, step, state):
    tg = objective.targets(model, params, ema_params, batch, key, config, step=step, state=state)
    return tg.x, tg.target, tg.t, tg.level, tg.cond["label"]

  with jax.default_matmul_precision(fixture.meta.get("matmul_precision", "highest")):
    out = jax.jit(run)(params, ema_params, batch, key, step, state)
  return dict(zip(FIELDS, (np.asarray(a) for a in out)))


def compare(name: str, want: Dict[str, np.ndarray], got: Dict[str, np.ndarray],
            tolerance_ulps: float = TOLERANCE_ULPS) -> CaseResult:
  """Largest absolute differences and their limits (see the module docstring)."""
  diffs, limits = {}, {}
  for field in FIELDS:
    w = np.asarray(want[field], np.float64)
    g = np.asarray(got[field], np.float64)
    if w.ndim == 0 and g.ndim == 1:  # The original's consistency training: a 0-d level.
      w = np.broadcast_to(w, g.shape)
    if w.shape != g.shape:
      diffs[field], limits[field] = float("inf"), 0.0
      continue
    diffs[field] = float(np.max(np.abs(g - w))) if w.size else 0.0
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    limits[field] = 0.0 if field in EXACT_FIELDS else tolerance_ulps * EPS32 * (scale + 1.0)
  return CaseResult(name, diffs, limits)


def check_case(fixture: Fixture, case: dict, model=None,
               tolerance_ulps: float = TOLERANCE_ULPS) -> CaseResult:
  """One case of the fixture (a `meta.json` entry) recomputed and compared."""
  name = case["name"]
  if case.get("module") not in TARGET_FUNCTIONS:
    return CaseResult(name, {}, {}, error=f"unknown target function {case.get('module')!r}")
  path = storage.join(fixture.directory, f"{name}.npz")
  if not storage.isfile(path):
    return CaseResult(name, {}, {}, error=f"no {name}.npz")
  with storage.open(path, "rb") as f, np.load(f) as z:
    want = {"x_t": z["x_t"], "v_t": z["v_t"], "t": z["t"], "level": z["dt_base"],
            "labels": z["labels"]}
  try:
    got = library_targets(fixture, case, model)
  except FixtureError as e:
    return CaseResult(name, {}, {}, error=str(e))
  return compare(name, want, got, tolerance_ulps)


def check_fixture(directory: str, cases: Optional[Sequence[str]] = None,
                  tolerance_ulps: float = TOLERANCE_ULPS) -> List[CaseResult]:
  """Every case of the fixture in `directory` (or those named in `cases`), in its order.

  Raises:
    FixtureError: not a fixture folder, or `cases` names a case it does not have.
  """
  fixture = load_fixture(directory)
  known = [c["name"] for c in fixture.meta["cases"]]
  unknown = sorted(set(cases or ()) - set(known))
  if unknown:
    raise FixtureError(f"{directory} has no case {', '.join(unknown)} (cases: {', '.join(known)})")
  model = build_model(fixture.meta)
  selected = [c for c in fixture.meta["cases"] if cases is None or c["name"] in cases]
  return [check_case(fixture, c, model, tolerance_ulps) for c in selected]


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m shortcut_jax.tools.check_original_targets",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--fixture", required=True, help="the fixture folder (meta.json, ...)")
  parser.add_argument("--case", action="append", help="check only this case (repeatable)")
  parser.add_argument("--tolerance-ulps", type=float, default=TOLERANCE_ULPS,
                      help="allowed difference of x_t and v_t in float32 ulps of each array's "
                           "largest magnitude plus 1 (default %(default)s)")
  args = parser.parse_args(argv)
  try:
    results = check_fixture(args.fixture, args.case, args.tolerance_ulps)
  except errors.UserError as e:  # A fixture that is missing or malformed, unreachable storage.
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  for r in results:
    print(r.line(), flush=True)
  failed = [r.name for r in results if not r.ok]
  print(f"{len(results) - len(failed)}/{len(results)} cases agree with the original "
        f"(x_t, v_t within {args.tolerance_ulps:g} float32 ulps of each array's scale; t, level, "
        f"labels exact)" + (f"; mismatches: {', '.join(failed)}" if failed else ""),
        file=sys.stderr)
  return 1 if failed or not results else 0


if __name__ == "__main__":
  sys.exit(main())
