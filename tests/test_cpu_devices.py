"""`shortcut_jax.parallel.cpu_devices`: which XLA_FLAGS it writes, and when it leaves them alone.

All on a plain dict as the environment: nothing here starts (or depends on) jax's backends. That
the flags give 2 single-threaded devices whose FID features equal one device's is checked in a
subprocess by tests/test_fid_eval.py::test_features_on_single_threaded_cpu_devices_match_one_device.
"""

import os
import subprocess
import sys

import pytest

from shortcut_jax.parallel import cpu_devices

FLAGS_2 = "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"


@pytest.fixture
def cores(monkeypatch):
  """Pretends the process may run on `n` cores."""
  def set_cores(n):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
  set_cores(2)
  return set_cores


def test_default_is_one_single_threaded_device_per_core(cores):
  env = {}
  assert cpu_devices.configure(environ=env) == 2
  assert env == {"XLA_FLAGS": FLAGS_2}
  cores(6)
  env = {"XLA_FLAGS": " --xla_dump_to=xla_dumps/d ", "JAX_PLATFORMS": "cpu"}
  assert cpu_devices.configure(environ=env) == 6
  assert env["XLA_FLAGS"] == ("--xla_dump_to=xla_dumps/d --xla_force_host_platform_device_count=6 "
                              "--xla_cpu_multi_thread_eigen=false")
  assert cpu_devices.core_count() == 6


@pytest.mark.parametrize("value, expected", [("", 2), ("auto", 2), ("AUTO", 2), ("3", 3),
                                             (" 4 ", 4), ("0", 0), ("1", 0), ("off", 0),
                                             ("false", 0), ("no", 0)])
def test_environment_variable_overrides_or_disables(cores, value, expected):
  env = {cpu_devices.ENV_VAR: value}
  assert cpu_devices.configure(environ=env) == expected
  if expected:
    assert env["XLA_FLAGS"] == (f"--xla_force_host_platform_device_count={expected} "
                                "--xla_cpu_multi_thread_eigen=false")
  else:
    assert "XLA_FLAGS" not in env


def test_count_argument_beats_the_variable_and_bad_values_fail(cores):
  env = {cpu_devices.ENV_VAR: "0"}
  assert cpu_devices.configure(4, environ=env) == 4 and "count=4" in env["XLA_FLAGS"]
  env = {cpu_devices.ENV_VAR: "8"}
  assert cpu_devices.configure(0, environ=env) == 0 and "XLA_FLAGS" not in env
  for bad in ("two", "-2", "1.5"):
    with pytest.raises(ValueError, match=cpu_devices.ENV_VAR):
      cpu_devices.configure(environ={cpu_devices.ENV_VAR: bad})


def test_one_core_machine_is_left_alone(cores):
  cores(1)
  env = {}
  assert cpu_devices.configure(environ=env) == 0 and env == {}


@pytest.mark.parametrize("flags", [
    "--xla_force_host_platform_device_count=8",
    "--xla_cpu_multi_thread_eigen=true",
    "--xla_dump_to=xla_dumps/x --xla_cpu_multi_thread_eigen=false",
])
def test_user_device_count_or_threading_flags_are_never_changed(cores, flags):
  env = {"XLA_FLAGS": flags}
  assert cpu_devices.configure(environ=env) == 0
  assert env == {"XLA_FLAGS": flags}
  # Even when asked explicitly.
  assert cpu_devices.configure(4, environ=env) == 0 and env == {"XLA_FLAGS": flags}


def test_jax_own_cpu_device_count_is_respected(cores):
  env = {"JAX_NUM_CPU_DEVICES": "4"}
  assert cpu_devices.configure(environ=env) == 0 and "XLA_FLAGS" not in env


@pytest.mark.parametrize("platforms, changed", [("cuda", False), ("tpu", False), ("gpu,tpu", False),
                                                ("cpu", True), ("cuda,cpu", True), ("", True)])
def test_only_when_the_cpu_platform_may_be_used(cores, platforms, changed):
  env = {"JAX_PLATFORMS": platforms}
  assert bool(cpu_devices.configure(environ=env)) == changed
  assert ("XLA_FLAGS" in env) == changed


def test_importing_the_module_and_eval_py_starts_no_backend():
  # eval.py configures the devices in main(): nothing imported before may start jax's backends.
  code = ("import sys; sys.argv = ['eval.py']; import eval; "
          "from shortcut_jax.parallel import cpu_devices; import jax; "
          "assert not cpu_devices._backends_started(); "
          "assert 'fid' in eval.DATA_PARALLEL_MODES and 'sample' in eval.DATA_PARALLEL_MODES; "
          "jax.devices(); assert cpu_devices._backends_started(); print('OK')")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
  out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_training_runs_get_a_count_their_batch_and_mesh_fit(cores):
  fit = cpu_devices.fitting_count
  assert fit(2, 64, {"data": -1, "fsdp": 1}) == 2
  assert fit(4, 6, {"data": -1, "fsdp": 1}) == 3  # The batch splits 3 ways, not 4.
  assert fit(2, 7) == 0  # An odd batch: one device, as before.
  assert fit(8, 64, {"data": 1, "fsdp": -1}) == 8
  assert fit(8, 64, {"data": 2, "fsdp": -1}) == 8 and fit(3, 64, {"data": 2, "fsdp": -1}) == 2
  assert fit(8, 64, {"data": 2, "fsdp": 2}) == 4  # A fixed mesh: exactly its size.
  assert fit(2, 64, {"data": 2, "fsdp": 4}) == 0  # Does not fit here either way.
  assert fit(2, None, None) == 2
  env = {}
  assert cpu_devices.configure(environ=env, batch_size=15, mesh={"data": -1, "fsdp": 1}) == 0
  assert env == {}
  cores(6)
  assert cpu_devices.configure(environ=env, batch_size=20, mesh={"data": -1, "fsdp": 1}) == 5
  assert "device_count=5 " in env["XLA_FLAGS"]
