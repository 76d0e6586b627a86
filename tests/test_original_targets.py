"""The library's `faithful=True` objectives against the training targets the original code computed
itself (tests/testdata/original_targets: its own `get_targets` functions, 14 cases), through
`shortcut_jax.tools.check_original_targets`; and what the fixture does not run: the update step's
shuffle and cfg_scale = 0 nulling around `get_targets`, and the consistency objectives' EMA."""

import copy
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shortcut_jax import objectives
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import flow_path
from shortcut_jax.tools import check_original_targets as check

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "testdata" / "original_targets"
META = json.loads((FIXTURE / "meta.json").read_text())
CASES = [c["name"] for c in META["cases"]]


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def results(fast_compile):
  del fast_compile  # Compiled with it first: the CLI below runs with the same XLA options.
  return check.check_fixture(FIXTURE)


@pytest.fixture(scope="module")
def fixture():
  return check.load_fixture(FIXTURE)


def test_every_case_agrees_with_the_original(results):
  assert len(CASES) == 14
  assert [r.name for r in results] == CASES
  assert all(r.ok for r in results), "\n".join(r.line() for r in results if not r.ok)
  for r in results:  # Times, levels and labels are exact; x_t and v_t within float32 rounding.
    assert r.diffs["t"] == r.diffs["level"] == r.diffs["labels"] == 0, r.line()
    assert r.diffs["x_t"] <= r.limits["x_t"] and r.diffs["v_t"] <= r.limits["v_t"], r.line()


def test_cli_prints_one_line_per_case(results):
  del results  # Only run after it: its compiled programs are in the cache.
  # The XLA options of `fast_compile`, so that the run finds the programs `results` compiled in
  # the persistent compilation cache (conftest.py) instead of compiling all 14 again.
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run(
      [sys.executable, "-m", "shortcut_jax.tools.check_original_targets", "--fixture",
       str(FIXTURE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  assert [line.split()[0] for line in lines] == CASES, proc.stdout
  assert all(line.endswith(" ok") for line in lines), proc.stdout
  assert "14/14 cases agree" in proc.stderr


def _perturb(path: pathlib.Path, key: str, index, delta: float):
  with np.load(path) as z:
    arrays = {k: z[k].copy() for k in z.files}
  arrays[key][index] += delta
  np.savez(path, **arrays)


@pytest.mark.parametrize("file,key,index,case,field", [
    # 1e-3 on one of 128 x 256 target values: about 20 times the tolerance.
    ("naive.npz", "v_t", (5, 1, 2, 3), "naive", "v_t"),
    # One weight of the teacher (the student's EMA) moves the bootstrap rows' targets.
    ("states.npz", "student/params_ema/['FinalLayer_0']['Dense_1']['bias']", (3,),
     "shortcut_batch32", "v_t"),
])
def test_a_perturbed_fixture_fails(tmp_path, capsys, file, key, index, case, field):
  folder = tmp_path / "original_targets"
  shutil.copytree(FIXTURE, folder)
  _perturb(folder / file, key, index, 1e-3 if file != "states.npz" else 0.5)
  assert check.main(["--fixture", str(folder), "--case", case]) == 1
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 1 and out[0].split()[0] == case and out[0].endswith("MISMATCH"), out
  assert f"{field} " in out[0] and "(>" in out[0]


def test_not_a_fixture(tmp_path, capsys):
  assert check.main(["--fixture", str(tmp_path)]) == 2
  assert "meta.json" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["consistency_distillation", "consistency_training_step900"])
def test_faithful_consistency_reads_the_ema_whatever_bootstrap_ema(fixture, case):
  # The original's consistency objectives call `call_model_ema` (the teacher's and the student's)
  # and never read bootstrap_ema: with bootstrap_ema = 0 the fixture's targets still hold.
  params, ema = fixture.states["student/params"], fixture.states["student/params_ema"]
  assert not np.allclose(params["FinalLayer_0"]["Dense_1"]["kernel"],
                         ema["FinalLayer_0"]["Dense_1"]["kernel"])  # So the check can fail.
  spec = copy.deepcopy(next(c for c in META["cases"] if c["name"] == case))
  spec["flags"]["model"]["bootstrap_ema"] = 0
  result = check.check_case(fixture, spec)
  assert result.ok, result.line()


def _label_model(num_classes):
  """A cheap network whose output depends on every input, the label included."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    shift = (params * t + 0.1 * level + 0.01 * cond["label"]).reshape(-1, 1, 1, 1)
    return 0.5 * x + jnp.sin(x + shift)
  return VelocityModel(apply_fn=apply_fn, num_classes=num_classes)


@pytest.mark.parametrize("case", ["shortcut_uncond", "livereflow_uncond"])
def test_update_scope_is_the_shuffle_and_nulling_then_get_targets(fixture, case):
  # What training runs (`faithful_scope='update'`, the default) is the original's update step:
  # a shuffle with split(key)[0], labels nulled for cfg_scale = 0, then the `get_targets` the
  # fixture checks, with split(key)[1].
  spec = next(c for c in META["cases"] if c["name"] == case)
  config = check.objective_config(spec)
  assert float(config["cfg_scale"]) == 0.0
  objective = objectives.get_objective(config["name"])
  num_classes = fixture.meta["dit_args"]["num_classes"]
  model = _label_model(num_classes)
  params, ema = jnp.float32(0.3), jnp.float32(0.7)
  batch = {"image": jnp.asarray(fixture.inputs["images"][:32]),
           "label": jnp.asarray(fixture.inputs["labels"][:32])}
  key = jax.random.PRNGKey(3)
  perm_key, targets_key = jax.random.split(key)
  shuffled = flow_path.permute_batch(batch, perm_key)
  nulled = dict(shuffled, label=jnp.full((32,), num_classes, jnp.int32))

  def run(batch, key, scope):
    tg = objective.targets(model, params, ema, batch, key, dict(config, faithful_scope=scope))
    return tg.x, tg.target, tg.t, tg.level, tg.cond["label"]

  got = jax.jit(run, static_argnums=2)(batch, key, "update")
  want = jax.jit(run, static_argnums=2)(nulled, targets_key, "get_targets")
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  # And the scopes differ where the update step matters (so the check can fail): get_targets
  # alone keeps the bootstrap / reflow rows' labels.
  raw = jax.jit(run, static_argnums=2)(shuffled, targets_key, "get_targets")
  assert not np.array_equal(np.asarray(raw[4]), np.asarray(want[4]))


def test_faithful_scope_is_checked():
  with pytest.raises(ValueError, match="faithful_scope"):
    flow_path.faithful_scope({"faithful_scope": "train"})
