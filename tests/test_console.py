"""The console of train.py / eval.py: progress, results and warnings; library INFO records go to
the workdir's log file. And eval.py's guidance default (the workdir config's)."""

import os
import re
import subprocess
import sys

import pytest

import digits_configs
from shortcut_jax import console
from shortcut_jax.parallel import cpu_devices

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compile")]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An absl INFO line: "I1201 13:48:37.459343 3905 checkpoint_manager.py:1234] ...".
INFO_LINE = re.compile(r"^I\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] ")
OURS = {f for _, _, names in os.walk(os.path.join(REPO, "shortcut_jax")) for f in names
        if f.endswith(".py")} | {"train.py", "eval.py"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["SHORTCUT_JAX_TEST_DATA_DIR"] = path
  return path


def _run(args, returncode=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  for name in ("XLA_FLAGS", cpu_devices.ENV_VAR):  # The programs' own device choice.
    env.pop(name, None)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # As a user runs it: console.py quiets TensorFlow.
  out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  console = out.stdout + out.stderr
  assert out.returncode == returncode, console[-6000:]
  return console


def _info_sources(text):
  """Files of the absl-format INFO lines, less TensorFlow's oneDNN notice (port.cc), printed by
  its C++ logging at import, before any Python code can configure it."""
  return {m.group(1) for m in map(INFO_LINE.match, text.splitlines()) if m} - {"port.cc"}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("console") / "w")
  console = _run(["train.py", "--config=configs/digits_shortcut.py:smoke", f"--workdir={workdir}",
                  f"--config.data.data_dir={data_dir}"])
  return workdir, console


def test_train_console_shows_progress_and_the_log_file_the_rest(trained):
  workdir, console = trained
  assert re.search(r"step 2/4 .*steps/s .*images/s .*ETA", console), console[-4000:]
  assert re.search(r"step 4/4 ", console)
  # train.py keeps XLA's default CPU device unless SHORTCUT_JAX_CPU_DEVICES asks (opt-in).
  assert "XLA CPU:" not in console
  sources = _info_sources(console)
  assert sources and sources <= OURS, f"library INFO lines on the console: {sources - OURS}"
  assert "orbax" not in console.lower().replace("orbax-checkpoint", "")  # no Orbax chatter
  assert "cpu_feature_guard" not in console  # TensorFlow's C++ INFO lines (TF_CPP_MIN_LOG_LEVEL).
  with open(os.path.join(workdir, "log.txt")) as f:
    log = f.read()
  assert not os.path.exists(os.path.join(workdir, "train.log"))
  assert re.search(r"step 4/4 ", log) and "config:" in log and "config:" not in console
  # The run's records start with its header line (file only), before the training's own.
  header = re.search(r"==== train\.py started \(process 0, pid \d+\): \S*train\.py "
                     r"--config=configs/digits_shortcut\.py:smoke", log)
  assert header and header.start() < log.index("config:") and "==== " not in console
  library = _info_sources(log) - OURS
  assert "checkpoint_manager.py" in library, library  # Orbax's records are kept there.
  assert any("orbax" in line for line in log.splitlines() if INFO_LINE.match(line))


def test_eval_console_and_guidance_default(trained, monkeypatch):
  workdir, _ = trained
  console = _run(["eval.py", f"--workdir={workdir}", "--mode=sample", "--steps=1",
                  "--num_samples=4", "--batch_size=4"])
  assert "wrote 4 samples with 1 steps" in console
  if len(os.sched_getaffinity(0)) >= 2:  # eval.py's sampling runs on one CPU device per core.
    cores = cpu_devices.core_count()
    assert f"XLA CPU: {cores} single-threaded devices" in console, console[-3000:]
  sources = _info_sources(console)
  assert sources <= OURS, sources - OURS
  # eval.py appends to the same log.txt, after its own header line.
  with open(os.path.join(workdir, "log.txt")) as f:
    log = f.read()
  assert not os.path.exists(os.path.join(workdir, "eval.log"))
  assert log.index("==== train.py started") < log.index("==== eval.py --mode=sample started")
  assert "wrote 4 samples with 1 steps" in log[log.index("==== eval.py --mode=sample"):]

  from shortcut_jax import evaluation
  seen = []
  monkeypatch.setattr(evaluation, "sample", lambda exp, params, w, steps, n, cfg_scale, *a:
                      seen.append(cfg_scale))
  for flag in (None, 0.0, 2.0):
    evaluation.run("sample", workdir, steps=[1], num_samples=4, cfg_scale=flag)
  # Unset: the workdir config's evals.samples.cfg_scale (1.5); 0: unconditional (the original's
  # meaning, shortcut_jax.core.guidance; --nocfg is 1, conditional without guidance).
  assert seen == [1.5, 0.0, 2.0]
  assert digits_configs.smoke_config(None).evals.samples.cfg_scale == 1.5


def test_a_user_error_is_one_message_and_exit_status_2(trained):
  workdir, _ = trained
  console = _run(["eval.py", f"--workdir={workdir}", "--mode=sample", "--steps=999"],
                 returncode=2)
  assert "error: --steps [999]: each must be between 1 and denoise_timesteps" in console, console
  assert "Traceback" not in console
  with open(os.path.join(workdir, "log.txt")) as f:  # The traceback is kept in the log file.
    log = f.read()
  assert "user error, with its traceback:" in log and "ArgumentError" in log


def test_guarded_main_reports_user_errors_and_keeps_bugs(capsys):
  from absl import flags
  from shortcut_jax import console, errors, storage

  def failing(error):
    def main(argv):
      raise error
    return main
  with pytest.raises(SystemExit) as e:
    console.guarded(failing(storage.StorageError("bucket gs://x does not exist")))(["prog"])
  assert e.value.code == errors.EXIT_USER_ERROR == 2
  assert capsys.readouterr().err == "error: bucket gs://x does not exist\n"
  with pytest.raises(KeyError):  # A bug: raised as it is, traceback and all.
    console.guarded(failing(KeyError("bug")))(["prog"])
  flags.FLAGS["traceback"].value = True
  try:
    with pytest.raises(storage.StorageError):  # --traceback: the user error is raised too.
      console.guarded(failing(storage.StorageError("again")))(["prog"])
  finally:
    flags.FLAGS["traceback"].value = False
  # Every user-facing error class of the library is a UserError and keeps its usual base.
  from shortcut_jax.parallel import distributed
  from shortcut_jax.parallel import sharding
  from shortcut_jax.checkpoints import manager
  from shortcut_jax.data import errors as data_errors
  from shortcut_jax.objectives import teacher
  for cls, base in [(errors.ConfigError, ValueError), (storage.StorageError, ValueError),
                    (distributed.LaunchError, RuntimeError), (sharding.ShardingError, ValueError),
                    (manager.CheckpointMismatchError, ValueError),
                    (data_errors.DataNotPreparedError, FileNotFoundError),
                    (teacher.TeacherError, ValueError)]:
    assert issubclass(cls, errors.UserError) and issubclass(cls, base), cls


def test_log_file_name_per_process_and_header(tmp_path):
  import logging as std_logging
  from absl import logging
  from shortcut_jax import console
  assert console.log_file_name(0) == "log.txt"
  assert console.log_file_name(3) == "log.process_3.txt"
  root = std_logging.getLogger()
  verbosity, root_level = logging.get_verbosity(), root.level
  console_filters = list(logging.get_absl_handler().filters)
  try:
    path = console.setup(str(tmp_path), "eval.py --mode=fid", libraries=False, process_index=2)
    assert path == str(tmp_path / "log.process_2.txt")
    logging.info("a record for the file")
    console.setup(str(tmp_path), "train.py", libraries=False, process_index=2)  # Appends.
    logging.info("a second run")
  finally:
    for handler in [h for h in root.handlers if getattr(h, "_shortcut_jax_log_file", False)]:
      root.removeHandler(handler)
      handler.close()
    logging.set_verbosity(verbosity)  # What this process logged before.
    root.setLevel(root_level)
    handler = logging.get_absl_handler()
    for f in [f for f in handler.filters if f not in console_filters]:
      handler.removeFilter(f)
  assert sorted(os.listdir(tmp_path)) == ["log.process_2.txt"]
  text = (tmp_path / "log.process_2.txt").read_text()
  order = [text.index(s) for s in ("==== eval.py --mode=fid started (process 2, pid ",
                                   "a record for the file", "==== train.py started (process 2",
                                   "a second run")]
  assert order == sorted(order), text


def test_expected_library_warnings_go_to_the_log_file_only():
  import logging as std_logging
  make = lambda msg: std_logging.LogRecord("tfds", std_logging.WARNING, "/x/dataset_builder.py",
                                           1, msg, None, None)
  keep = console.ConsoleFilter()
  assert not keep.filter(make("Using custom data configuration: PhotosLargeConfig(...)"))
  assert keep.filter(make("Some other warning"))
