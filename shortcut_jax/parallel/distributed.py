"""Multi-process start-up: joins JAX's multi-controller runtime (`jax.distributed`).

Every process of a multi-host job runs the same program (`train.py` / `eval.py`) and calls
`initialize()` before touching any device. Where the cluster is described, first match wins:

  1. flags `--coordinator_address=host:port --num_processes=N --process_id=i` (defined here,
     so train.py and eval.py accept them);
  2. environment variables `SHORTCUT_JAX_COORDINATOR` (host:port), `SHORTCUT_JAX_NUM_PROCESSES`,
     `SHORTCUT_JAX_PROCESS_ID` (JAX's own `JAX_COORDINATOR_ADDRESS` is accepted for the first;
     the count and index must still be given, JAX does not read them from the environment);
  3. auto-detection by JAX: Cloud TPU pod slices (every worker runs the command), SLURM
     (`srun`, one task per node or per GPU), Open MPI (`mpirun`) — no arguments needed;
  4. none of these: a single process, and nothing is done.

`SHORTCUT_JAX_CPU_COLLECTIVES=gloo` (or `--cpu_collectives=gloo`) selects CPU collectives, needed
for several CPU-only processes (the tests fake a cluster that way on one machine).

Before any of this, `check_launch` rejects a launch that is recognised but incomplete (a
process count without a coordinator, a SLURM job run outside `srun`, an Open MPI world JAX
cannot read, a torchrun-style `WORLD_SIZE`): started anyway, each process would silently train
alone. `WorkdirLock` then catches what no environment shows: several jobs (N single-process
runs that never joined one cluster, or jobs of different process counts) writing to one workdir.

`StopRequest` is the train loop's preemption check: a SIGTERM (or a TPU maintenance event) on any
one process makes every process stop at the same step, after saving it.
"""

import os
import signal
from typing import Mapping, Optional

import jax
import numpy as np
from absl import flags, logging

# The workdir lock and the collective exchange live in their own modules; what callers of
# `distributed` use of them is here too.
from shortcut_jax.parallel.exchange import exchange_json  # noqa: F401
from shortcut_jax.parallel.workdir_lock import LaunchError, WorkdirLock  # noqa: F401

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-process runs; "
    "not needed on TPU pods or under SLURM / Open MPI).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", None, "CPU collectives for multi-process CPU runs: 'gloo' or 'mpi'.")


def _flag(holder):
  try:
    return holder.value
  except flags.UnparsedFlagAccessError:  # Imported by a program that parsed no flags.
    return None


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


_SLURM_STEP_VARS = ("SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_ESCAPE = "SHORTCUT_JAX_ALLOW_SINGLE_PROCESS"


def check_launch(coordinator_address: Optional[str], num_processes: Optional[int],
                 process_id: Optional[int], env: Optional[Mapping[str, str]] = None) -> None:
  """Raises `LaunchError` for a multi-process launch that is recognised but incomplete.

  Checked (first problem wins, every message says what to set):
    * a process count or index without a coordinator (flags, `SHORTCUT_JAX_*` or `JAX_*`
      variables) outside SLURM / Open MPI / TPU: JAX would start one lone process;
    * an index outside [0, count), a count below 1;
    * a SLURM job of several tasks or nodes whose step variables are missing (the script was
      run directly in the batch shell, not under `srun`);
    * an Open MPI world of several ranks without `OMPI_MCA_orte_hnp_uri` (Open MPI 5 / PMIx,
      which JAX's detection does not read);
    * a torchrun-style `WORLD_SIZE` > 1 (JAX does not read it).
  `SHORTCUT_JAX_ALLOW_SINGLE_PROCESS=1` skips the cluster-environment checks (one process on
  purpose inside a larger allocation).

  Args:
    coordinator_address: as resolved by `initialize` (flag, then environment), or None.
    num_processes: likewise.
    process_id: likewise.
    env: the environment (default `os.environ`).
  """
  env = os.environ if env is None else env
  how = ("give all three: --coordinator_address=host:port --num_processes=N --process_id=i "
         "(or SHORTCUT_JAX_COORDINATOR / SHORTCUT_JAX_NUM_PROCESSES / SHORTCUT_JAX_PROCESS_ID)")
  if num_processes is not None and num_processes < 1:
    raise LaunchError(f"the process count must be >= 1, got {num_processes}")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise LaunchError(f"process id {process_id} is outside [0, {num_processes}) ; {how}")
  if coordinator_address:
    return  # Explicit: initialize() checks the count and index are there too.
  if (num_processes or 1) > 1 or (process_id is not None and num_processes is None):
    if not launched_as_cluster(env):
      what = (f"{num_processes} processes" if num_processes else f"process id {process_id}")
      raise LaunchError(
          f"{what} asked for, but no coordinator address is set and no SLURM / Open MPI / TPU "
          f"launch is detected: every process would run alone; {how}")
  if env.get(_ESCAPE, "") not in ("", "0"):
    return
  slurm_tasks = int(env.get("SLURM_NTASKS", "1") or 1)
  slurm_nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1)
  if "SLURM_JOB_ID" in env and (slurm_tasks > 1 or slurm_nodes > 1):
    missing = [v for v in _SLURM_STEP_VARS if v not in env]
    if missing:
      raise LaunchError(
          f"SLURM job {env['SLURM_JOB_ID']} has {slurm_tasks} tasks on {slurm_nodes} nodes, but "
          f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: this process "
          "was not started by `srun` (run `srun python train.py ...` inside the batch script), "
          f"so it would train alone; set {_ESCAPE}=1 to run one process on purpose")
  ompi_size = int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1)
  if ompi_size > 1 and "OMPI_MCA_orte_hnp_uri" not in env:
    raise LaunchError(
        f"Open MPI world of {ompi_size} ranks (rank {env.get('OMPI_COMM_WORLD_RANK', '?')}) "
        "without OMPI_MCA_orte_hnp_uri (Open MPI 5 / PMIx): JAX cannot find the coordinator; "
        f"{how}, e.g. --process_id=$OMPI_COMM_WORLD_RANK --num_processes=$OMPI_COMM_WORLD_SIZE")
  world = int(env.get("WORLD_SIZE", "1") or 1)
  if world > 1 and not launched_as_cluster(env):
    raise LaunchError(
        f"WORLD_SIZE={world} (a torchrun / Kubernetes-style launcher) is not read by JAX: every "
        f"process would train alone; {how}, e.g. --coordinator_address=$MASTER_ADDR:<port> "
        "--num_processes=$WORLD_SIZE --process_id=$RANK")


def launched_as_cluster(env=None) -> bool:
  """True under SLURM / Open MPI with several tasks, or on a multi-host TPU slice."""
  env = os.environ if env is None else env
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Joins the JAX cluster if this process is one of several; no-op otherwise.

  Args:
    coordinator_address: host:port of the coordinator (process 0); default from the flags,
      then the environment (see the module docstring).
    num_processes: number of processes; same defaults.
    process_id: this process's index; same defaults.

  Returns:
    Whether `jax.distributed` was initialized (by this call or before it).

  Raises:
    ValueError: a coordinator is given without the process count or index.
    LaunchError: a launch that is recognised but incomplete (`check_launch`).
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = (coordinator_address or _flag(_COORDINATOR)
                         or os.environ.get("SHORTCUT_JAX_COORDINATOR")
                         or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  num_processes = next((v for v in (num_processes, _flag(_NUM_PROCESSES),
                                    _env_int("SHORTCUT_JAX_NUM_PROCESSES"),
                                    _env_int("JAX_NUM_PROCESSES")) if v is not None), None)
  process_id = next((v for v in (process_id, _flag(_PROCESS_ID),
                                 _env_int("SHORTCUT_JAX_PROCESS_ID"),
                                 _env_int("JAX_PROCESS_ID")) if v is not None), None)
  check_launch(coordinator_address, num_processes, process_id)
  collectives = _flag(_CPU_COLLECTIVES) or os.environ.get("SHORTCUT_JAX_CPU_COLLECTIVES")
  if collectives:
    jax.config.update("jax_cpu_collectives_implementation", collectives)

  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(f"coordinator {coordinator_address} given without the process count and "
                       "index (--num_processes/--process_id or SHORTCUT_JAX_NUM_PROCESSES/"
                       "SHORTCUT_JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif launched_as_cluster():
    jax.distributed.initialize()  # JAX reads the TPU / SLURM / MPI environment itself.
  else:
    return False
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


class StopRequest:
  """When to stop for a preemption notice, agreed by every process of the job.

  Use as a context manager around the train loop and call `reached(step)` once per step, with
  the same step sequence on every process; it returns True at one step, the same on all
  processes, after any one of them got SIGTERM (or, on Cloud TPU, a maintenance event that JAX
  reports). The loop then saves that step and exits.

  How the processes agree:
    * one process: a Python SIGTERM handler sets a flag that `reached` reads (no communication);
    * several processes with JAX's preemption service (on by default in `jax.distributed`):
      `multihost_utils.reached_preemption_sync_point`, whose notifier (installed by
      `jax.distributed.initialize`) catches SIGTERM and maintenance notices, tells the other
      processes, and picks the next step after the furthest any of them reached; no Python
      handler is installed, it would replace JAX's;
    * several processes without it (`jax_enable_preemption_service=False`): the Python flag,
      combined over processes (max) every `check_every` steps by a small all-gather.
  """

  def __init__(self, check_every: int = 10):
    self.check_every = max(int(check_every), 1)
    self.signal = None
    self._previous = None
    self._installed = False
    multi = jax.process_count() > 1
    self.mode = "local"
    if multi:
      try:
        from jax._src import distributed as jax_distributed
        has_service = getattr(jax_distributed.global_state, "preemption_sync_manager", None)
      except ImportError:
        has_service = None
      self.mode = "sync_point" if has_service is not None else "allgather"

  def _handler(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __enter__(self):
    if self.mode == "sync_point" and callable(signal.getsignal(signal.SIGTERM)):
      logging.warning("a Python SIGTERM handler replaced JAX's preemption notifier: SIGTERM will "
                      "not stop this job cleanly")
    if self.mode != "sync_point":
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      self._installed = True
    logging.info("preemption: %s", {"local": "SIGTERM handler (one process)",
                                     "sync_point": "JAX preemption sync point (all processes)",
                                     "allgather": f"SIGTERM flag combined every {self.check_every} "
                                                  "steps (all processes)"}[self.mode])
    return self

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
    return False

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop; the same answer on every process."""
    if self.mode == "local":
      return self.signal is not None
    if self.mode == "sync_point":
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(int(step)):
        self.signal = self.signal or "preemption notice"
        return True
      return False
    if step % self.check_every:
      return False
    from jax.experimental import multihost_utils
    flags_all = multihost_utils.process_allgather(np.int32(self.signal is not None))
    if int(np.max(flags_all)):
      self.signal = self.signal or "SIGTERM on another process"
      return True
    return False


