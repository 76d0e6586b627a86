"""Checkpoint saving and resume verification: how long a save blocks the training loop, and how
long resume spends verifying, for a DiT-B/2 train state (params + EMA + Adam mu/nu, float32).

Three save paths side by side, in one run, on the same state, round-robin (one save of each per
round, in an order that rotates from round to round, so that load on a shared machine and the
after-effects of the previous save fall on all three alike):

  * `orbax`: Orbax's own asynchronous save (`ocp.CheckpointManager`, the same items and options
    as the library's), no checks;
  * `before`: the library's save path before the recovery change (reproduced below from
    `shortcut_jax/checkpoints/manager.py` at commit cb693b9): each `save` first waits for the
    previous asynchronous save, then process 0 reads the whole step back and CRC-32s it, while
    the training loop waits;
  * `new`: `shortcut_jax.checkpoints.manager.CheckpointManager`: each process CRC-32s the files
    it wrote in a background thread once Orbax has committed the step.

Each save's `blocking_s` (the time `save` takes to return) is split into Orbax's own `save`
call and what the save path adds around it (`added_to_orbax_s`, exact, immune to load noise).
After each save the script waits (as training would go on) until that save's background work is
over (`background_s`: Orbax's write and commit, plus for `new` the checksum list), then a few
seconds more, so that every save starts with nothing in flight, as with saves every few thousand
steps. Resume verification is then timed on the last step of `before` (its serial CRC of every
file) and of `new` (the collective check: each process its share, in threads; one process here),
and the restore itself (Orbax, the same for all) on `orbax`. The step files are in the page cache
then (just written): verification is CPU-bound here, as it is on a fast disk.

  python benchmarks/checkpoint.py --out=checkpoint.json

Prints one JSON object (also written to --out). Results: docs/benchmarks.md ("Checkpoint
saving and resume verification").
"""

import json
import os
import shutil
import sys
import tempfile
import time
import zlib

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from shortcut_jax import config as config_lib  # noqa: E402
from shortcut_jax import experiment
from shortcut_jax.checkpoints import manager as manager_lib  # noqa: E402
from shortcut_jax.models import dit  # noqa: E402
from common import emit_json  # benchmarks/ is on sys.path when a script runs

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "DiT-B/2", "DiT preset of the train state.")
flags.DEFINE_integer("saves", 5, "Saves per save path (the first of `before` has no previous "
                     "step to CRC: steady state is saves 2+).")
flags.DEFINE_float("settle_s", 3.0, "Extra wait after a save's background work, before the next.")
flags.DEFINE_list("variants", ["orbax", "before", "new"], "Save paths to compare.")
flags.DEFINE_string("dir", None, "Where to write the checkpoints (default: a temporary folder; "
                    "up to ~4 GB per save path, deleted at the end).")
flags.DEFINE_string("out", None, "Optional JSON output path.")

ITEMS = lambda: {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


def _options():
  return ocp.CheckpointManagerOptions(save_interval_steps=1, max_to_keep=2,
                                      enable_async_checkpointing=True, create=True)


def _args(step, state):
  return ocp.args.Composite(state=ocp.args.StandardSave(state),
                            meta=ocp.args.JsonSave({"step": step, "data_position": step}))


def _timed_orbax_save(holder, manager):
  """Wraps `manager.save` so that `holder.orbax_s` is the time of Orbax's own save call: what a
  save path adds to Orbax's blocking time is then measured exactly, whatever the noise."""
  inner = manager.save

  def save(*args, **kwargs):
    t0 = time.perf_counter()
    try:
      return inner(*args, **kwargs)
    finally:
      holder.orbax_s = time.perf_counter() - t0
  manager.save = save


class OrbaxOnly:
  """Orbax's asynchronous save, nothing else."""

  def __init__(self, directory):
    self.directory = directory
    self.manager = ocp.CheckpointManager(directory, options=_options(), item_handlers=ITEMS())
    _timed_orbax_save(self, self.manager)

  def save(self, step, state):
    return self.manager.save(step, args=_args(step, state), force=True)

  def busy(self):
    return self.manager.is_saving_in_progress()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class Before(OrbaxOnly):
  """The save path and `verify` of shortcut_jax/checkpoints/manager.py at commit cb693b9
  (single process), reproduced: `save` seals the previous step first (waits for it, then reads
  every file of it back and CRC-32s it, on process 0, in the training loop)."""

  CHECKSUMS = "checksums.json"

  def __init__(self, directory):
    super().__init__(directory)
    self.unsealed = []

  @staticmethod
  def _crc32(path):
    crc = 0
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 22), b""):
        crc = zlib.crc32(chunk, crc)
    return crc

  def _files(self, step_dir):
    out = []
    for root, _, files in os.walk(step_dir):
      for name in files:
        rel = os.path.relpath(os.path.join(root, name), step_dir)
        if rel != self.CHECKSUMS:
          out.append(rel)
    return sorted(out)

  def save(self, step, state):
    self._seal()
    started = super().save(step, state)
    if started:
      self.unsealed.append(step)
    return started

  def _seal(self):
    if not self.unsealed:
      return
    self.manager.wait_until_finished()
    steps, self.unsealed = self.unsealed, []
    for step in steps:
      step_dir = os.path.join(self.directory, str(step))
      if not os.path.isdir(step_dir):
        continue
      files = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                     self._crc32(os.path.join(step_dir, rel))] for rel in self._files(step_dir)}
      tmp = os.path.join(step_dir, self.CHECKSUMS + ".tmp")
      with open(tmp, "w") as f:
        json.dump({"step": step, "crc32": files}, f)
      os.replace(tmp, os.path.join(step_dir, self.CHECKSUMS))

  def verify(self, step):
    step_dir = os.path.join(self.directory, str(step))
    with open(os.path.join(step_dir, self.CHECKSUMS)) as f:
      files = json.load(f)["crc32"]
    for rel, (size, _) in sorted(files.items()):
      if os.path.getsize(os.path.join(step_dir, rel)) != size:
        return f"{rel}: size"
    for rel, (_, crc) in sorted(files.items()):
      if self._crc32(os.path.join(step_dir, rel)) != crc:
        return f"{rel}: crc"
    return None

  def close(self):
    self.manager.wait_until_finished()
    self._seal()
    self.manager.close()


class New:
  """shortcut_jax's CheckpointManager."""

  def __init__(self, workdir):
    self.ckpt = manager_lib.CheckpointManager(workdir, every_steps=1, max_to_keep=2,
                                              async_save=True)
    self.directory = self.ckpt.directory
    _timed_orbax_save(self, self.ckpt._manager)  # pylint: disable=protected-access

  def save(self, step, state):
    return self.ckpt.save(step, state, {"data_position": step}, force=True)

  def busy(self):
    # pylint: disable=protected-access
    return (self.ckpt._manager.is_saving_in_progress()
            or self.ckpt._checksummer._queue.unfinished_tasks > 0)

  def close(self):
    self.ckpt.close()


def build_state(preset):
  """A train state of `preset`'s shapes (real TrainState tree), filled with random floats."""
  c = config_lib.base_config()
  c.model.update(**dit.DIT_PRESETS[preset], dtype="float32")
  c.data.update(name="imagenet256", image_size=32, num_classes=1000)
  exp = experiment.build_experiment(c, image_shape=(32, 32, 4))
  abstract = exp.abstract_state()
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
  values = [jax.random.normal(k, l.shape, l.dtype) if jnp.issubdtype(l.dtype, jnp.floating)
            else jnp.zeros(l.shape, l.dtype) for k, l in zip(keys, leaves)]
  state = jax.tree.unflatten(treedef, values)
  jax.block_until_ready(state)
  num_params = sum(int(l.size) for l in jax.tree.leaves(abstract.params))
  return state, abstract, num_params


def _wait_idle(saver, t0):
  """Seconds from `t0` until the saver has nothing in flight."""
  while saver.busy():
    time.sleep(0.05)
  return time.perf_counter() - t0


def main(argv):
  del argv
  t_start = time.time()
  state, abstract, num_params = build_state(FLAGS.model)
  leaves = jax.tree.leaves(state)
  state_bytes = sum(int(l.nbytes) for l in leaves)
  logging.info("%s state: %d leaves, %.2f GB", FLAGS.model, len(leaves), state_bytes / 1e9)
  root = FLAGS.dir or tempfile.mkdtemp(prefix="shortcut_jax_ckpt_bench_")
  makers = {"orbax": lambda: OrbaxOnly(os.path.join(root, "orbax", "checkpoints")),
            "before": lambda: Before(os.path.join(root, "before", "checkpoints")),
            "new": lambda: New(os.path.join(root, "new"))}
  savers = {v: makers[v]() for v in FLAGS.variants}
  results = {v: {"blocking_s": [], "added_to_orbax_s": [], "background_s": []}
             for v in FLAGS.variants}
  try:
    names = list(savers)
    for step in range(1, FLAGS.saves + 1):
      shift = (step - 1) % len(names)  # Each save path goes first, second, ... in turn.
      for name in names[shift:] + names[:shift]:
        saver = savers[name]
        t0 = time.perf_counter()
        assert saver.save(step, state)
        blocked = time.perf_counter() - t0
        results[name]["blocking_s"].append(round(blocked, 3))
        results[name]["added_to_orbax_s"].append(round(blocked - saver.orbax_s, 6))
        results[name]["background_s"].append(round(_wait_idle(saver, t0) - blocked, 3))
        logging.info("%s save %d: blocked %.2f s, background %.2f s", name, step, blocked,
                     results[name]["background_s"][-1])
        time.sleep(FLAGS.settle_s)
    for name, saver in savers.items():
      t0 = time.perf_counter()
      saver.close()
      results[name]["close_s"] = round(time.perf_counter() - t0, 3)
    last = FLAGS.saves
    if "before" in savers:
      t0 = time.perf_counter()
      assert savers["before"].verify(last) is None
      results["before"]["resume_verify_s"] = round(time.perf_counter() - t0, 3)
    if "new" in savers:
      ckpt = manager_lib.CheckpointManager(os.path.join(root, "new"), read_only=True)
      t0 = time.perf_counter()
      verdict, _ = ckpt._check(last)  # pylint: disable=protected-access  # What resume runs.
      results["new"]["resume_verify_s"] = round(time.perf_counter() - t0, 3)
      assert verdict == "intact", verdict
      ckpt.close()
    if "orbax" in savers:
      results["orbax"]["resume_verify_s"] = 0.0
      manager = ocp.CheckpointManager(os.path.join(root, "orbax", "checkpoints"),
                                      item_handlers=ITEMS())
      t0 = time.perf_counter()
      out = manager.restore(last, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      jax.block_until_ready(out["state"])
      results["orbax"]["restore_s"] = round(time.perf_counter() - t0, 3)
      manager.close()
  finally:
    if not FLAGS.dir:
      shutil.rmtree(root, ignore_errors=True)
  for r in results.values():
    r["blocking_mean_s"] = round(float(np.mean(r["blocking_s"])), 3)
    steady = r["blocking_s"][1:] or r["blocking_s"]
    r["blocking_mean_steady_s"] = round(float(np.mean(steady)), 3)
    r["blocking_median_steady_s"] = round(float(np.median(steady)), 3)
    r["background_mean_s"] = round(float(np.mean(r["background_s"])), 3)
    r["added_to_orbax_max_steady_s"] = max(r["added_to_orbax_s"][1:] or r["added_to_orbax_s"])
  report = {"model": FLAGS.model, "num_params": num_params, "state_leaves": len(leaves),
            "state_bytes": state_bytes, "saves": FLAGS.saves, "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "orbax": ocp.__version__,
            "results": results, "wall_s": round(time.time() - t_start, 1)}
  for name in ("new", "before"):
    if "orbax" in results and name in results:
      for stat in ("mean", "median"):
        report[f"{name}_vs_orbax_blocking_{stat}_steady"] = round(
            results[name][f"blocking_{stat}_steady_s"] /
            results["orbax"][f"blocking_{stat}_steady_s"], 3)
  emit_json(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
