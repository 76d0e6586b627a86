"""One single-threaded XLA CPU device per core, for data-parallel work on CPU-only machines.

Why. By default XLA's CPU backend is one device that runs each op (convolution, matmul) with a
multi-threaded Eigen pool. On small batches of mid-sized convolutions that parallelises poorly:
the FID InceptionV3 (`models/inception.py`) ran at 5.78 images/s (median; 299x299, batch 64)
on an idle 2-core machine, below PyTorch's 6.34 in the same run, and XLA flags (oneDNN, XNNPACK,
default precision) did not change that. Exposing one *single-threaded* device per core and
splitting the batch over them (the evaluation code already shards every batch over all local
devices) ran the same network at 8.75 images/s: 1.51x, and 1.38x PyTorch (docs/benchmarks.md,
"Inception on CPU"). The gain needs idle cores: with other jobs holding them it shrank to
1.0-1.15x.

What. `configure()` must run before jax creates its backends, i.e. before the first
`jax.devices()`, array or jitted call (importing jax is fine); eval.py calls it first thing in
`main` for the modes that shard their batches. It appends to `XLA_FLAGS`

  --xla_force_host_platform_device_count=<n> --xla_cpu_multi_thread_eigen=false

where n is the number of cores this process may run on (`os.sched_getaffinity`). The two flags
act on XLA's host (CPU) platform only: GPU and TPU backends, and the choice of the default
backend, are unchanged (on a GPU machine jax still computes on the GPU; only work placed on
the CPU backend would see n devices).

When it does nothing (returns 0):
  * `SHORTCUT_JAX_CPU_DEVICES=0` (or 1, or `off`/`false`/`no`): disabled; `=<n>`: n devices
    instead of the core count; unset / empty / `auto`: the core count. An explicit `count`
    argument takes precedence over the variable.
  * fewer than 2 devices would result (a 1-core machine), or, with `batch_size` / `mesh`, no
    count >= 2 fits them (`fitting_count`);
  * `XLA_FLAGS` already sets the device count or the Eigen threading
    (`--xla_force_host_platform_device_count`, `--xla_cpu_multi_thread_eigen`), or
    `JAX_NUM_CPU_DEVICES` is set: the user's choice stands, nothing is added;
  * `JAX_PLATFORMS` is set and does not include `cpu`;
  * jax's backends already exist (too late: the flags are read once; a warning says so).

train.py calls it only when `SHORTCUT_JAX_CPU_DEVICES` is set (e.g. `=auto`; single-process
runs, as many devices as the batch and `config.mesh` allow): the digits default trained at
0.9x the default's steps/s on the idle 2-core machine, 1.2-1.3x only while other jobs held the
cores (docs/benchmarks.md).
"""

import math
import os
import sys
from typing import Mapping, MutableMapping, Optional

ENV_VAR = "SHORTCUT_JAX_CPU_DEVICES"
_COUNT_FLAG = "--xla_force_host_platform_device_count"
_THREAD_FLAG = "--xla_cpu_multi_thread_eigen"
_OFF = ("0", "off", "false", "no", "none")


def core_count() -> int:
  """Cores this process may run on (its CPU affinity; `os.cpu_count()` where that is unknown)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def requested_count(count: Optional[int] = None,
                    environ: Optional[MutableMapping[str, str]] = None) -> int:
  """The device count asked for by `count`, else `$SHORTCUT_JAX_CPU_DEVICES`, else the core
  count; 0 when disabled (or when it would be a single device).

  Raises:
    ValueError: the variable is neither a non-negative integer nor auto/off.
  """
  environ = os.environ if environ is None else environ
  if count is None:
    value = environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
      count = core_count()
    elif value in _OFF:
      count = 0
    else:
      try:
        count = int(value)
      except ValueError:
        raise ValueError(f"{ENV_VAR}={environ[ENV_VAR]!r}: expected a device count, "
                         "'auto' or '0' (off)") from None
      if count < 0:
        raise ValueError(f"{ENV_VAR}={count}: expected a count >= 0")
  return count if count >= 2 else 0


def _flag_names(xla_flags: str):
  return {token.split("=", 1)[0] for token in xla_flags.split() if token.startswith("--")}


def _backends_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def fitting_count(n: int, batch_size: Optional[int] = None,
                  mesh: Optional[Mapping[str, int]] = None) -> int:
  """The largest device count d <= n (d >= 2) that a training config can use, else 0.

  Args:
    n: devices wanted.
    batch_size: the global batch, which every device must get an equal share of.
    mesh: `config.mesh` ({axis: size}, -1 = fill): fixed sizes must multiply to a divisor of d
      (to d itself when no axis fills).
  """
  sizes = [int(v) for v in (mesh or {}).values()]
  fixed = math.prod(v for v in sizes if v > 0)
  fills = -1 in sizes
  for d in range(n, 1, -1):
    if batch_size is not None and batch_size % d:
      continue
    if mesh is not None and (d % fixed if fills else d != fixed):
      continue
    return d
  return 0


def configure(count: Optional[int] = None,
              environ: Optional[MutableMapping[str, str]] = None, *,
              batch_size: Optional[int] = None,
              mesh: Optional[Mapping[str, int]] = None) -> int:
  """Asks XLA for `count` (default: see `requested_count`) single-threaded CPU devices.

  Args:
    count: devices wanted; None: `$SHORTCUT_JAX_CPU_DEVICES`, else one per core.
    environ: the environment to read and change (default `os.environ`; tests pass a dict).
    batch_size, mesh: a training run's global batch and `config.mesh`: fewer devices are asked
      for where needed so that they fit (`fitting_count`), none where no count >= 2 does.

  Returns:
    The device count now in XLA_FLAGS, or 0 when nothing was changed (see the module doc).
  """
  environ = os.environ if environ is None else environ
  n = requested_count(count, environ)
  if n and (batch_size is not None or mesh is not None):
    n = fitting_count(n, batch_size, mesh)
  if not n:
    return 0
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms and "cpu" not in [p.strip().lower() for p in platforms.split(",")]:
    return 0
  xla_flags = environ.get("XLA_FLAGS", "")
  if _flag_names(xla_flags) & {_COUNT_FLAG, _THREAD_FLAG} or environ.get("JAX_NUM_CPU_DEVICES"):
    return 0
  if environ is os.environ and _backends_started():
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("cpu_devices.configure: jax's backends are already initialised; keeping "
                    "the CPU devices they have")
    return 0
  environ["XLA_FLAGS"] = " ".join(
      f for f in (xla_flags.strip(), f"{_COUNT_FLAG}={n}", f"{_THREAD_FLAG}=false") if f)
  return n
