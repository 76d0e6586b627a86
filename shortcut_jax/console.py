"""What train.py and eval.py print: progress, results and warnings on the console; everything
else in a log file in the workdir.

`setup(workdir, "train.py")` (called by the programs' `main`, after `distributed.initialize`):
  * the console (absl's stderr handler) shows this library's own records (the progress line
    `step N/M ... steps/s ... ETA`, evaluator results, what eval.py wrote) and WARNING and above
    from anywhere; INFO records of other libraries (Orbax, TensorFlow Datasets, JAX, ...), often
    kilobytes each, are dropped from it (`--log_libraries` keeps them);
  * `workdir/log.txt` gets every INFO record and above, ours and the libraries'
    (`log.process_<i>.txt` on processes other than 0), appended across runs. In a remote workdir
    (`gs://...`) the file is written in a local staging folder and uploaded by
    `remote_staging.sync_all()` (the trainer calls it as it logs, and it runs at exit). train.py and
    eval.py share the file: every run starts with a header line naming the program (and
    eval.py's mode) and its command line, e.g. `==== eval.py --mode=fid started: ...`.

`detail(msg, *args)` logs an INFO record that goes to the log file only (e.g. the full config).
Importing this module first also quiets TensorFlow's C++ INFO lines (`TF_CPP_MIN_LOG_LEVEL=1`
unless set), which must happen before TensorFlow is imported.
"""

import atexit
import logging as std_logging
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from shortcut_jax import errors  # noqa: E402
from shortcut_jax import remote_staging  # noqa: E402
from shortcut_jax import storage  # noqa: E402

_LOG_LIBRARIES = flags.DEFINE_bool(
    "log_libraries", False, "Also show other libraries' INFO records (Orbax, TFDS, JAX, ...) on "
    "the console; they always go to the workdir's log file (log.txt).")

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_PROGRAMS = {os.path.join(os.path.dirname(_PACKAGE), name) for name in ("train.py", "eval.py")}
_FILE_ONLY = "shortcut_jax_file_only"
# Other libraries' warnings about what this library does on purpose (log file only): TFDS warns
# on every builder config made at run time (image_folder, photos_large).
_EXPECTED_LIBRARY_WARNINGS = ("Using custom data configuration",)


def is_ours(record: std_logging.LogRecord) -> bool:
  """Whether a record was logged by this library (or train.py / eval.py)."""
  path = os.path.abspath(record.pathname or "")
  return path.startswith(_PACKAGE + os.sep) or path in _PROGRAMS


class ConsoleFilter(std_logging.Filter):
  """Passes warnings and errors, and this library's own records; drops other libraries' INFO."""

  def __init__(self, libraries: bool = False):
    super().__init__()
    self.libraries = libraries

  def filter(self, record):
    if getattr(record, _FILE_ONLY, False):
      return False
    if str(record.msg).startswith(_EXPECTED_LIBRARY_WARNINGS):
      return False
    return record.levelno >= std_logging.WARNING or self.libraries or is_ours(record)


def _flag(holder, default):
  try:
    return holder.value
  except flags.UnparsedFlagAccessError:
    return default


LOG_FILE = "log.txt"


def log_file_name(process_index: int = 0) -> str:
  """The log file's name in the workdir: `log.txt` on process 0, `log.process_<i>.txt` else."""
  if process_index == 0:
    return LOG_FILE
  stem, ext = os.path.splitext(LOG_FILE)
  return f"{stem}.process_{process_index}{ext}"


def setup(workdir: Optional[str], program: str, *, libraries: Optional[bool] = None,
          process_index: Optional[int] = None) -> Optional[str]:
  """Filters the console and opens the log file; returns the log file's path (None: no workdir).

  Args:
    workdir: where the log file goes; None: console filtering only.
    program: what this run is, for the header line that starts its records in the file,
      e.g. "train.py" or "eval.py --mode=fid".
    libraries: keep library INFO records on the console (default: `--log_libraries`).
    process_index: this process's index (default: `jax.process_index()`).
  """
  libraries = _flag(_LOG_LIBRARIES, False) if libraries is None else libraries
  console = logging.get_absl_handler()
  for old in [f for f in console.filters if isinstance(f, ConsoleFilter)]:
    console.removeFilter(old)
  console.addFilter(ConsoleFilter(libraries))
  root = std_logging.getLogger()
  root.setLevel(min(root.level or std_logging.WARNING, std_logging.INFO))
  # absl counts verbosity up (INFO 0, WARNING -1): at least INFO.
  logging.set_verbosity(max(logging.get_verbosity(), logging.INFO))
  if not workdir:
    return None
  if process_index is None:
    import jax
    process_index = jax.process_index()
  mirror = remote_staging.staging(workdir)
  if not mirror.active:
    os.makedirs(workdir, exist_ok=True)
  name = log_file_name(process_index)
  mirror.pull(name)  # A resumed remote run appends to the file it had.
  path = mirror.local_path(name)
  for old in [h for h in root.handlers if getattr(h, "_shortcut_jax_log_file", False)]:
    root.removeHandler(old)
    old.close()
  handler = std_logging.FileHandler(path)
  handler.setLevel(std_logging.INFO)
  handler.setFormatter(logging.PythonFormatter())
  handler._shortcut_jax_log_file = True  # pylint: disable=protected-access
  root.addHandler(handler)
  if mirror.active:
    atexit.register(_sync_quietly)
  detail("==== %s started (process %d, pid %d): %s", program, process_index, os.getpid(),
         " ".join(sys.argv))
  shown = storage.join(workdir, name) if mirror.active else path
  logging.info("library logs go to %s%s", shown, "" if libraries else " (--log_libraries: console too)")
  return path


def _sync_quietly():
  """At exit: the last lines of a remote workdir's log reach the bucket."""
  for handler in std_logging.getLogger().handlers:
    handler.flush()
  try:
    remote_staging.sync_all()
  except Exception as e:  # pylint: disable=broad-except  # Never mask the program's own error.
    sys.stderr.write(f"could not upload the log to the workdir: {e}\n")


def detail(msg: str, *args, **kwargs) -> None:
  """An INFO record for the log file only."""
  logging.info(msg, *args, extra={_FILE_ONLY: True}, **kwargs)


flags.DEFINE_bool("traceback", False, "Show the Python traceback of errors in the input too "
                  "(a bad config value, a missing file); by default only their message.")


def guarded(main):
  """`main(argv)` with `errors.UserError`s reported as `error: <message>` alone on stderr (the
  traceback to the log file, where one is set up) and exit status 2; with --traceback they are
  raised as usual. Other exceptions keep their traceback (exit status 1)."""
  def wrapped(argv):
    try:
      return main(argv)
    except errors.UserError as e:
      if flags.FLAGS["traceback"].value:  # (Readable before the flags are parsed, too.)
        raise
      detail("user error, with its traceback:", exc_info=e)
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(errors.EXIT_USER_ERROR)
  return wrapped


def run(main) -> None:
  """`absl.app.run(main)` for the entry points and tools, through `guarded`."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(guarded(main))
