"""Checks the end-to-end objective tests share: a resumed run's weights against a straight run's,
samples written through `evaluation.run('sample')` (what eval.py runs), and behaviour
fingerprints (`check_fingerprint`)."""

import base64
import json
import os

import jax
import numpy as np

FINGERPRINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata",
                            "smoke_fingerprints.json")
RECORD = "SHORTCUT_JAX_RECORD_FINGERPRINTS"  # A file to record fingerprints into instead.


def assert_same_weights(workdir_a, workdir_b):
  """The final online weights of two workdirs are bit-identical."""
  from shortcut_jax import experiment
  a = jax.device_get(experiment.restore_experiment(str(workdir_a))[1].params)
  b = jax.device_get(experiment.restore_experiment(str(workdir_b))[1].params)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_samples(workdir, image_shape, steps=(1, 2), num_samples=3, cfg_scale=1.5,
                   fingerprint=None):
  """`--mode=sample` writes `num_samples` uint8 images of `image_shape` for every step budget;
  with `fingerprint` (a name), the run's losses and these images are its fingerprint."""
  from shortcut_jax import evaluation
  written = evaluation.run("sample", str(workdir), steps=list(steps), num_samples=num_samples,
                           cfg_scale=cfg_scale)
  images = {}
  for n in steps:
    with np.load(written[n]) as f:
      assert f["images"].shape == (num_samples, *image_shape), f["images"].shape
      assert f["images"].dtype == np.uint8 and f["images"].std() > 0  # not one flat colour
      images[f"{n}_steps_cfg{cfg_scale:g}"] = f["images"]
  if fingerprint:
    check_fingerprint(fingerprint, workdir, images)


def check_fingerprint(name, workdir, images):
  """The behaviour of a test's training run — its logged training losses, and `images` (uint8
  arrays by name) it gave — is what `tests/testdata/smoke_fingerprints.json` recorded for
  `name`: the numbers of the code before the layered redesign (issue 22), so moving code
  between modules and layers cannot change what a run computes unseen. Losses agree to 1e-6
  relative, pixels within 1 level (the float32 rounding of another CPU). With
  SHORTCUT_JAX_RECORD_FINGERPRINTS=FILE set, records into FILE instead."""
  with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  have = {"losses": {str(l["step"]): l["train/loss"] for l in lines if "train/loss" in l},
          "images": {k: {"shape": list(v.shape), "uint8": base64.b64encode(
              np.ascontiguousarray(v, np.uint8).tobytes()).decode()} for k, v in images.items()}}
  if os.environ.get(RECORD):
    path = os.environ[RECORD]
    table = json.load(open(path)) if os.path.exists(path) else {}
    table[name] = have
    with open(path, "w") as f:
      json.dump(table, f, indent=1, sort_keys=True)
    return
  with open(FINGERPRINTS) as f:
    want = json.load(f)[name]
  assert sorted(have["losses"]) == sorted(want["losses"]), (have["losses"], want["losses"])
  for step, loss in want["losses"].items():
    np.testing.assert_allclose(have["losses"][step], loss, rtol=1e-6, err_msg=f"{name} step {step}")
  assert sorted(have["images"]) == sorted(want["images"])
  for key, entry in want["images"].items():
    expected = np.frombuffer(base64.b64decode(entry["uint8"]), np.uint8).reshape(entry["shape"])
    got = np.asarray(images[key], np.int16)
    assert np.abs(got - expected).max() <= 1, f"{name} {key}: samples changed"
