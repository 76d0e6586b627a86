"""Input pipeline speed from a local folder of shards, 1 against n files read at once.

  python benchmarks/input_pipeline.py [--reads=1,8] [--shard_size=32] [--repeats=5] [--out=F]

Writes the digits train split as precomputed latents (a tiny random VAE, `shard_size` examples
a shard: 1,618 examples in 51 shards at 32) into a temporary folder, then reads the whole split
through `shortcut_jax.data.pipeline.make_dataset` (one evaluation pass, batches of 100, the
stored order either way: `data.parallel_reads`, `stored_order_read_config`), `repeats` times per
setting, the settings interleaved. Prints one JSON object: examples/s per setting (median and
all passes) and whether every setting gave the same examples in the same order.

A local folder is the easy case: the files are in the page cache after the first pass, so this
measures the pipeline's own overhead of opening files one after another; on a bucket every
file open waits a round trip, which parallel reads overlap.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import emit_json  # noqa: E402
from shortcut_jax.data import pipeline  # noqa: E402
from shortcut_jax.tools import encode_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("reads", ["1", "8"], "data.parallel_reads settings to compare.")
flags.DEFINE_integer("shard_size", 32, "Examples per shard.")
flags.DEFINE_integer("repeats", 5, "Timed passes per setting.")
flags.DEFINE_integer("batch", 100, "Batch size of the pass.")
flags.DEFINE_string("out", None, "Also write the JSON here.")


def _config(data_dir: str, latents_dir: str):
  import importlib
  c = importlib.import_module("configs.digits_shortcut").get_config("smoke")
  c.unlock()
  c.data.update(data_dir=data_dir, latents="precomputed", latents_dir=latents_dir)
  c.vae.random_init = True
  return c


def _pass(data_config, reads: int):
  data = data_config.copy_and_resolve_references()
  data.parallel_reads = reads
  start = time.perf_counter()
  labels = [b["label"] for b in pipeline.make_dataset(
      data, split="train", global_batch_size=FLAGS.batch, seed=0, train=False,
      process_index=0, process_count=1)]
  seconds = time.perf_counter() - start
  return np.concatenate(labels), seconds


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    c = _config(os.path.join(tmp, "tfds"), os.path.join(tmp, "latents"))
    meta = encode_dataset.encode_dataset(c, splits=["train"], shard_size=FLAGS.shard_size,
                                         progress=False)
    settings = [int(r) for r in FLAGS.reads]
    times = {r: [] for r in settings}
    orders = {}
    _pass(c.data, settings[0])  # Warm the page cache and TF's one-time set-up.
    for _ in range(FLAGS.repeats):
      for r in settings:
        labels, seconds = _pass(c.data, r)
        times[r].append(seconds)
        orders.setdefault(r, labels)
    n = meta["splits"]["train"]["num_examples"]
    result = {
        "examples": n, "shards": meta["splits"]["train"]["num_shards"],
        "batch": FLAGS.batch, "repeats": FLAGS.repeats,
        "same_order": all(np.array_equal(orders[settings[0]], orders[r]) for r in settings),
        "results": [{"parallel_reads": r,
                     "examples_per_s": round(n / statistics.median(times[r]), 1),
                     "seconds": [round(t, 4) for t in times[r]]} for r in settings],
    }
  emit_json(result, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
