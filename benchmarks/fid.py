"""FID cost on this machine: Inception throughput and the wall time of one FID-4096 on digits.

  python benchmarks/fid.py [--batch_size=64] [--num_samples=4096] [--num_steps=1] [--out=F.json]

Prints one JSON object:
  * inception_images_per_s: FID InceptionV3 features at 299x299 (random weights: speed does not
    depend on the values), batch `batch_size`, after compilation;
  * fid_*: one FID of a small digits model (the `digits_shortcut.py:smoke` architecture with
    randomly initialised weights, untrained) against random reference statistics: generation
    of `num_samples` images with `num_steps` steps, their Inception features, and the Fréchet
    distance (two 2048x2048 eigendecompositions), timed separately, compilation included in
    `fid_total_s` and excluded from the parts.
"""

import importlib
import os
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import emit_json  # noqa: E402  benchmarks/ is on sys.path when a script runs

from shortcut_jax import experiment
from shortcut_jax.evaluators import fid  # noqa: E402
from shortcut_jax.evaluators import fid_evaluator  # noqa: E402
from shortcut_jax.evaluators import generate  # noqa: E402
from shortcut_jax.models import inception  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Images per Inception / sampler call.")
flags.DEFINE_integer("num_samples", 4096, "Generated images for the FID timing.")
flags.DEFINE_integer("num_steps", 1, "Sampling steps for the FID timing.")
flags.DEFINE_integer("throughput_batches", 5, "Timed Inception batches.")
flags.DEFINE_string("out", None, "Also write the JSON here.")


def random_variables(seed=0):
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in inception.expected_variable_shapes().items():
    if path.endswith("kernel"):
      flat[path] = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif path.endswith(("var", "scale")):
      flat[path] = np.ones(shape)
    else:
      flat[path] = np.zeros(shape)
  return inception.unflatten_variables({k: v.astype(np.float32) for k, v in flat.items()})


def main(argv):
  del argv
  features = fid_evaluator.InceptionFeatures(random_variables(), batch_size=FLAGS.batch_size)
  images = np.random.default_rng(0).uniform(-1, 1, (features.batch_size, 299, 299, 3))
  images = jax.device_put(images.astype(np.float32), features.data_sharding)
  features.batch_features(images)  # Compile.
  t0 = time.perf_counter()
  for _ in range(FLAGS.throughput_batches):
    features.batch_features(images)
  throughput = FLAGS.throughput_batches * features.batch_size / (time.perf_counter() - t0)

  config = importlib.import_module("configs.digits_shortcut").get_config("smoke")
  exp = experiment.build_experiment(config, image_shape=(16, 16, 1))
  params = jax.jit(exp.init_state)(jax.random.PRNGKey(0)).ema_params
  rng = np.random.default_rng(1)
  fake = rng.normal(size=(4096, inception.FEATURE_DIM))
  reference = fake.mean(0), np.cov(fake, rowvar=False)

  t_start = time.perf_counter()
  # Compile the sampler and Inception on the generated images' shape before timing the parts.
  for samples, n in generate.generate_batches(
      exp, params, num_images=features.batch_size, num_steps=FLAGS.num_steps, cfg_scale=1.5,
      batch_size=features.batch_size, mesh=features.mesh):
    features.batch_features(fid_evaluator.decode(exp, samples), n)
  t_gen = t_feat = 0.0
  stats = fid.RunningStats()
  t = time.perf_counter()
  for samples, n in generate.generate_batches(
      exp, params, num_images=FLAGS.num_samples, num_steps=FLAGS.num_steps, cfg_scale=1.5,
      batch_size=features.batch_size, mesh=features.mesh):
    jax.block_until_ready(samples)
    t_gen += time.perf_counter() - t
    t = time.perf_counter()
    stats.update(features.batch_features(fid_evaluator.decode(exp, samples), n))
    t_feat += time.perf_counter() - t
    t = time.perf_counter()
  t = time.perf_counter()
  value = fid.fid_from_stats(*stats.result(), *reference)
  t_frechet = time.perf_counter() - t
  emit_json({
      "device": str(jax.devices()[0].device_kind), "device_count": jax.device_count(),
      "inception_image_size": 299, "batch_size": features.batch_size,
      "inception_images_per_s": round(throughput, 2),
      "fid_model": "digits_shortcut.py:smoke architecture, random init (untrained)",
      "fid_num_samples": FLAGS.num_samples, "fid_num_steps": FLAGS.num_steps,
      "fid_generation_s": round(t_gen, 2), "fid_features_s": round(t_feat, 2),
      "fid_frechet_s": round(t_frechet, 2),
      "fid_total_s": round(time.perf_counter() - t_start, 2), "fid": value,
  }, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
