"""Launches that would silently become N independent runs are errors before training.

  * `distributed.check_launch`: a process count without a coordinator, a SLURM job run outside
    `srun`, an Open MPI 5 world, a torchrun-style `WORLD_SIZE`; through `initialize` too, before
    JAX is asked to start anything.
  * `distributed.WorkdirLock` (workdir/run.lock): a second run on a workdir another run holds
    fails, naming the workdir and the other run; after that run ended (or was killed) a
    resumed run works; `train_and_evaluate` takes the lock before anything else.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shortcut_jax.parallel import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@pytest.mark.parametrize("args,env,match", [
    ((None, 2, None), {}, r"2 processes asked for, but no coordinator"),
    ((None, None, 1), {}, r"process id 1 asked for, but no coordinator"),
    ((None, 2, 3), {}, r"process id 3 is outside \[0, 2\)"),
    ((None, 0, None), {}, r"process count must be >= 1"),
    ((None, None, None), {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"},
     r"SLURM job 77 has 8 tasks.*SLURM_STEP_NODELIST, SLURM_LOCALID are not set.*srun"),
    ((None, None, None), {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2"},
     r"SLURM job 77 has 1 tasks on 2 nodes.*srun"),
    ((None, None, None), {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"},
     r"Open MPI world of 4 ranks \(rank 1\).*OMPI_MCA_orte_hnp_uri"),
    ((None, None, None), {"WORLD_SIZE": "2", "RANK": "0"}, r"WORLD_SIZE=2.*--num_processes"),
])
def test_incomplete_launches_are_errors(args, env, match):
  with pytest.raises(distributed.LaunchError, match=match):
    distributed.check_launch(*args, env=env)


@pytest.mark.parametrize("args,env", [
    ((None, None, None), {}),  # One process.
    ((None, 1, 0), {}),
    (("10.0.0.1:1234", 2, 1), {"WORLD_SIZE": "2"}),  # Explicit coordinator: fine.
    ((None, None, None), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}),  # One-task SLURM job.
    ((None, None, None), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2",
                          "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "n[1-4]"}),  # srun.
    ((None, 4, 2), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2",
                    "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "n[1-4]"}),
    ((None, None, None), {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://x:1"}),
    ((None, None, None), {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8",
                          "SHORTCUT_JAX_ALLOW_SINGLE_PROCESS": "1"}),  # On purpose.
])
def test_complete_or_single_launches_pass(args, env):
  distributed.check_launch(*args, env=env)


def test_initialize_rejects_a_count_without_coordinator_before_starting_jax(monkeypatch):
  for name in ("SHORTCUT_JAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS", "SHORTCUT_JAX_PROCESS_ID",
               "SHORTCUT_JAX_NUM_PROCESSES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
               "TPU_WORKER_HOSTNAMES", "WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  started = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: started.append(1))
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(distributed.LaunchError, match="2 processes asked for"):
    distributed.initialize()
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  monkeypatch.setenv("SLURM_JOB_ID", "5")
  monkeypatch.setenv("SLURM_NTASKS", "2")
  with pytest.raises(distributed.LaunchError, match="not started by `srun`"):
    distributed.initialize()
  assert not started
  monkeypatch.delenv("SLURM_JOB_ID")
  monkeypatch.delenv("SLURM_NTASKS")
  assert distributed.initialize() is False  # Nothing set: one process, nothing started.
  assert not started


def test_second_run_on_a_workdir_fails_naming_both(tmp_path):
  workdir = str(tmp_path / "w")
  first = distributed.WorkdirLock(workdir).acquire(run_id="runA")
  record = json.loads(open(os.path.join(workdir, "run.lock")).read())
  assert record["run_id"] == "runA" and record["process_count"] == 1
  assert record["pid"] == os.getpid()
  with pytest.raises(distributed.LaunchError) as e:
    distributed.WorkdirLock(workdir).acquire(run_id="runB")
  assert workdir in str(e.value) and "run runA (1 process(es)" in str(e.value)
  # The failed attempt left the holder's record alone.
  assert json.loads(open(os.path.join(workdir, "run.lock")).read())["run_id"] == "runA"
  first.release()
  # Resumed after the first run ended: the lock is free again.
  with distributed.WorkdirLock(workdir) as again:
    assert json.loads(open(os.path.join(workdir, "run.lock")).read())["run_id"] == again.run_id


def test_a_killed_run_does_not_block_the_resume(tmp_path):
  workdir = str(tmp_path / "w")
  script = textwrap.dedent(f"""
      import sys, time
      sys.path.insert(0, {REPO!r})
      from shortcut_jax.parallel import distributed
      lock = distributed.WorkdirLock({workdir!r}).acquire(run_id="killed")
      print("locked", flush=True)
      time.sleep(600)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(distributed.LaunchError, match=r"run killed .*pid %d" % proc.pid):
      distributed.WorkdirLock(workdir).acquire()
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  lock = distributed.WorkdirLock(workdir).acquire()  # The kernel dropped the dead run's lock.
  lock.release()


def test_without_file_locks_a_live_heartbeat_blocks_and_a_stale_one_does_not(tmp_path,
                                                                              monkeypatch):
  import fcntl
  import errno

  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  path = os.path.join(workdir, "run.lock")
  monkeypatch.setattr(fcntl, "flock", no_locks)
  other = {"run_id": "elsewhere", "process_count": 2, "host": "other-host", "pid": 1,
           "started": "then", "heartbeat": time.time()}
  with open(path, "w") as f:
    json.dump(other, f)
  with pytest.raises(distributed.LaunchError, match="run elsewhere .2 process.*other-host"):
    distributed.WorkdirLock(workdir).acquire()
  with open(path, "w") as f:
    json.dump(dict(other, heartbeat=time.time() - 3600), f)
  lock = distributed.WorkdirLock(workdir).acquire(run_id="mine")
  assert json.loads(open(path).read())["run_id"] == "mine"
  lock.heartbeat()
  assert json.loads(open(path).read())["heartbeat"] >= time.time() - 5
  lock.release()


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile_test")  # Compiling is most of a smoke run.
def test_training_on_a_held_workdir_stops_before_training_then_resumes(tmp_path):
  import digits_configs
  from shortcut_jax.train import trainer
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path / "tfds")
  workdir = str(tmp_path / "w")
  config = digits_configs.smoke_config(data_dir, max_steps=4, checkpoint__every_steps=4)
  other = distributed.WorkdirLock(workdir).acquire(run_id="other")
  with pytest.raises(distributed.LaunchError, match=f"workdir {workdir} is in use by run other"):
    trainer.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # Nothing was trained.
  other.release()
  trainer.train_and_evaluate(config, workdir)
  # The next run (a resume: nothing left to train) takes the released lock again.
  assert trainer.train_and_evaluate(config, workdir) == {}
  distributed.WorkdirLock(workdir).acquire().release()
