"""Cascades: stage checks before anything runs, and a generator + upscaler cascade under
`:smoke` through `evaluation.run('cascade')` (samples, grids, timing JSON)."""

import importlib
import json
import os
import time

import numpy as np
import pytest

import digits_configs

from shortcut_jax import evaluation
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.evaluators import cascade

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_stages_that_do_not_fit_are_errors_before_sampling():
  gen16 = experiment.build_experiment(importlib.import_module("configs.digits_shortcut")
                                   .get_config("smoke"), image_shape=(16, 16, 1))
  gen8 = experiment.build_experiment(importlib.import_module("configs.digits_8px_shortcut")
                                  .get_config("smoke"), image_shape=(8, 8, 1))
  up = experiment.build_experiment(importlib.import_module("configs.digits_upscale_x2")
                                .get_config("smoke"), image_shape=(16, 16, 1))
  cascade.check_stages([gen8, up], [1, 1], ["gen8", "up"])
  with pytest.raises(ValueError, match=r"takes 8x8x1 inputs.*outputs 16x16x1"):
    cascade.check_stages([gen16, up], [1, 1], ["gen16", "up"])
  with pytest.raises(ValueError, match="not an upscaler"):
    cascade.check_stages([gen8, gen16], [1, 1], ["gen8", "gen16"])
  with pytest.raises(ValueError, match="one step budget per stage"):
    cascade.check_stages([gen8, up], [1], ["gen8", "up"])
  with pytest.raises(ValueError, match="at least one upscaler"):
    cascade.check_stages([gen8], [1], ["gen8"])


@pytest.mark.slow
def test_generator_and_upscaler_cascade(tmp_path):
  data_dir = str(tmp_path / "tfds")
  gen_dir, up_dir = str(tmp_path / "gen"), str(tmp_path / "up")
  trainer.train_and_evaluate(digits_configs.quick_run_config("digits_8px_shortcut", data_dir, 1), gen_dir)
  trainer.train_and_evaluate(digits_configs.quick_run_config("digits_upscale_x2", data_dir, 1), up_dir)
  out = str(tmp_path / "out")
  start = time.perf_counter()
  evaluation.run("cascade", None, workdirs=[gen_dir, up_dir], steps=[1, 2],
                          num_samples=5, cfg_scale=1.5, output_dir=out, batch_size=4)
  wall = time.perf_counter() - start
  with np.load(os.path.join(out, "samples.npz")) as f:
    assert f["images"].shape == (5, 16, 16, 1) and f["images"].dtype == np.uint8
    assert f["labels"].shape == (5,)
  with open(os.path.join(out, "cascade.json")) as f:
    written = json.load(f)
  assert [s["image_shape"] for s in written["stages"]] == [[8, 8, 1], [16, 16, 1]]
  # Timed without compilation: the stages' seconds are a part of the call's wall time (which
  # also compiles every stage once).
  assert all(s["seconds"] > 0 for s in written["stages"])
  assert sum(s["seconds"] for s in written["stages"]) < wall
  assert all(os.path.exists(s["grid"]) for s in written["stages"])
  # The final 16x16 digits scored as a one-stage model would be, on the saved images.
  from shortcut_jax.evaluators import digits_metrics as dm  # pylint: disable=g-import-not-at-top
  data = digits_configs.quick_run_config("digits_upscale_x2", data_dir, 1).data
  clf = dm.get_classifier(data)
  with np.load(os.path.join(out, "samples.npz")) as f:
    expected = dm.digits_metrics(clf, dm.reference_stats(clf, data),
                                 f["images"] / 127.5 - 1.0, f["labels"])
  assert written["digits_metrics"] == pytest.approx(expected, rel=1e-6)
  assert set(expected) == {"fd_digits", "accuracy"}
  # The control: the generator's own images (stage 0: seed + 0), bicubic-upsampled.
  from shortcut_jax.data import low_res  # pylint: disable=g-import-not-at-top
  from shortcut_jax.evaluators import generate as gen  # pylint: disable=g-import-not-at-top
  from shortcut_jax.evaluators import image_files
  exp, params, _ = evaluation.restore_weights(gen_dir, None, True)
  images, labels = gen.generate(exp, params, num_images=5, num_steps=1, cfg_scale=1.5, seed=0,
                                batch_size=4, progress=False)
  bicubic = image_files.to_uint8(low_res.upsample(np.clip(images, -1, 1), 2)) / 127.5 - 1.0
  assert written["digits_metrics_bicubic_last_stage"] == pytest.approx(
      dm.digits_metrics(clf, dm.reference_stats(clf, data), bicubic, labels), rel=1e-6)
  with pytest.raises(ValueError, match="do not fit"):
    evaluation.run("cascade", None, workdirs=[up_dir, up_dir], steps=[1, 1], num_samples=2,
                   cfg_scale=None, output_dir=out)
