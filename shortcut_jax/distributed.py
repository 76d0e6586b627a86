"""Multi-process start-up: `jax.distributed.initialize` when running on several hosts.

TPU pods and SLURM / Open MPI GPU clusters are detected by JAX itself; an explicit coordinator
can be given with the environment variables SHORTCUT_JAX_COORDINATOR (host:port),
SHORTCUT_JAX_NUM_PROCESSES and SHORTCUT_JAX_PROCESS_ID. A single process needs nothing.
"""

import os

import jax
from absl import logging



def _launched_as_cluster() -> bool:
  """True under SLURM / Open MPI with several tasks, or on a multi-host TPU slice."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize() -> None:
  """Joins the JAX cluster if this process is one of several; no-op otherwise."""
  coordinator = os.environ.get("SHORTCUT_JAX_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["SHORTCUT_JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["SHORTCUT_JAX_PROCESS_ID"]))
  elif _launched_as_cluster():
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
