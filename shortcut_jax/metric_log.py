"""Where a training run's scalars go: `MetricLog(config, workdir, mirror, is_main)`.

On process 0: TensorBoard event files, `metrics.jsonl` (one JSON object per logged step), the
log file (one line per write, not the console) and, when `config.wandb.project` is set, a
Weights & Biases run. On the other processes: the log file only.

The TensorBoard events are written by `TensorBoardScalars`, without TensorFlow: records in the
TFRecord framing of TensorBoard's own writer (`tensorboard.summary.writer.record_writer`) holding
`Event` protos with `simple_value` scalars, which TensorBoard and `tf.compat.v1.train.
summary_iterator` read. TensorFlow's summary writer would import Keras with it (seconds at every
start) and write remote paths through TensorFlow's own GCS client; here every file is local, in
the workdir's staging folder (`remote_staging.Mirror`), uploaded with the rest.
"""

import json
import os
import socket
import time
from typing import Dict, Optional

import ml_collections
from absl import logging

from shortcut_jax import console
from shortcut_jax import remote_staging
from shortcut_jax import storage


class TensorBoardScalars:
  """Appends scalar summaries to one new TensorBoard event file in a local folder."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time()):010d}."
                                     f"{socket.gethostname()}.{os.getpid()}.v2")
    self._file = open(self.path, "ab")
    self._records = record_writer.RecordWriter(self._file)
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event):
    self._records.write(event.SerializeToString())

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                    summary=self._summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


class JsonLines:
  """Appends one JSON object per logged step to `metrics.jsonl` in the workdir's staging folder
  (the workdir itself when it is local); a resumed run continues the same file."""

  def __init__(self, mirror: remote_staging.Mirror, name: str = "metrics.jsonl"):
    mirror.pull(name)
    self.path = mirror.local_path(name)

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")


class Wandb:
  """Scalars into a Weights & Biases run."""

  def __init__(self, run):
    self.run = run

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    self.run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.run.finish()


def make_wandb(config: ml_collections.ConfigDict, workdir: str) -> Optional[Wandb]:
  """A `Wandb` sink when `config.wandb.project` is set and `wandb` is installed, else None.

  The run id is kept in workdir/wandb_run_id, so a resumed run continues the same W&B run.
  """
  w = config.get("wandb")
  if not w or not w.get("project"):
    return None
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("wandb.project=%r is set but the wandb package is not installed "
                    "(pip install wandb): logging to TensorBoard only", w.project)
    return None
  id_path = storage.join(workdir, "wandb_run_id")
  if storage.exists(id_path):
    run_id = storage.read_text(id_path).strip()
  else:
    run_id = wandb.util.generate_id() if hasattr(wandb, "util") else os.urandom(4).hex()
    storage.write_text(id_path, run_id)
  run = wandb.init(project=w.project, entity=w.get("entity"),
                   name=w.get("name") or storage.basename(storage.absolute(workdir)),
                   dir=remote_staging.staging(workdir).local, id=run_id, resume="allow",
                   mode=w.get("mode", "online"), config=json.loads(config.to_json_best_effort()))
  return Wandb(run)


class MetricLog:
  """Every sink of a run's scalars behind one `write(step, scalars)`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mirror: remote_staging.Mirror,
               is_main: bool):
    self.tensorboard = TensorBoardScalars(mirror.local) if is_main else None
    self.jsonl = JsonLines(mirror) if is_main else None
    self.wandb = make_wandb(config, workdir) if is_main else None

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    console.detail("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    for sink in (self.tensorboard, self.jsonl, self.wandb):
      if sink is not None:
        sink.write(step, scalars)

  def flush(self) -> None:
    for sink in (self.tensorboard, self.wandb):
      if sink is not None:
        sink.flush()

  def close(self) -> None:
    for sink in (self.tensorboard, self.wandb):
      if sink is not None:
        sink.close()
