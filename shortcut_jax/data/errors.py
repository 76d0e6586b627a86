"""The error raised when a dataset that needs manual data has not been prepared yet."""

from typing import Optional

from shortcut_jax import errors


class DataNotPreparedError(errors.UserError, FileNotFoundError):
  """A dataset is not in `data_dir` and cannot be built without files the user must download."""


def prepare_command(name: str, data_dir: Optional[str], manual_dir: Optional[str] = None) -> str:
  """The shell command that prepares dataset `name` (shown in error messages and docs).

  Args:
    name: dataset name ('celebahq256', ...).
    data_dir: where TFDS data lives (None: the TFDS default).
    manual_dir: folder with the downloaded files (None: a placeholder).

  Returns:
    One command line.
  """
  cmd = (f"python -m shortcut_jax.data.prepare --dataset {name} "
         f"--manual_dir {manual_dir or '/path/to/downloaded/' + name}")
  if data_dir:
    cmd += f" --data_dir {data_dir}"
  return cmd
