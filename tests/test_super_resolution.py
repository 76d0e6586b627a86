"""Super-resolution end to end under `:smoke`: train, `sr_metrics`, `super_resolve` on files."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import digits_configs

from shortcut_jax import evaluation
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.data import low_res
from shortcut_jax.evaluators import conditions
from shortcut_jax.evaluators import sr_quality

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compile")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("sr")
  workdir = str(root / "w")
  trainer.train_and_evaluate(digits_configs.quick_run_config("sr_x4_photos", str(root / "data"), 2),
                             workdir)
  return workdir


def _run(workdir, mode, **kw):
  args = dict(steps=[1], num_samples=6, cfg_scale=None, seed=0, batch_size=8)
  args.update(kw)
  return evaluation.run(mode, workdir, **args)


def test_sr_metrics_reports_model_and_bicubic(trained):
  results = _run(trained, "sr_metrics", steps=[1, 2])
  assert set(results["steps"]) == {"1", "2"} and results["factor"] == 4
  assert results["num_images"] == 6
  with open(os.path.join(trained, "sr_metrics.json")) as f:
    assert json.load(f)["steps"]["1"] == results["steps"]["1"]
  # The bicubic entry is the LR input's bicubic upsampling scored against HR, recomputed here.
  exp, _, _ = experiment.restore_experiment(trained)
  hr = conditions.held_out_examples(exp.config, 6)["image"]
  expected = sr_quality.sr_metrics(hr, low_res.cond_image(hr, 4))
  for k, v in expected.items():
    assert results["bicubic"][k] == pytest.approx(v, rel=1e-4)
  for k in ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y"):
    assert np.isfinite(results["steps"]["1"][k])
  # The groups by detail cover every crop, and their gains average to the mean PSNR gain.
  groups = results["gain_by_detail"]
  assert sum(g["crops"] for g in groups) == 6
  mean_gain = sum(g["crops"] * g["gain"]["1"] for g in groups) / 6
  assert mean_gain == pytest.approx(results["steps"]["1"]["psnr_rgb"]
                                    - results["bicubic"]["psnr_rgb"], abs=1e-6)


def _write_inputs(folder):
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (20, 28), np.uint8), "L").save(f"{folder}/grey.png")
  Image.fromarray(rng.integers(0, 255, (40, 36, 3), np.uint8)).save(f"{folder}/rgb.jpg")
  with open(f"{folder}/broken.png", "wb") as f:
    f.write(b"not an image")


def test_super_resolve_folder_end_to_end(trained, tmp_path):
  inputs, out = str(tmp_path / "in"), str(tmp_path / "out")
  _write_inputs(inputs)
  result = _run(trained, "super_resolve", input_dir=inputs, output_dir=out)
  assert sorted(os.path.basename(p) for p in result["written"]) == ["grey.png", "rgb.png"]
  assert "broken.png" in result["skipped"]
  # HR references: outputs at the reference size (cropped to a multiple of the factor), RGB.
  assert np.asarray(Image.open(f"{out}/grey.png")).shape == (20, 28, 3)
  assert np.asarray(Image.open(f"{out}/rgb.png")).shape == (40, 36, 3)
  # Nothing is overwritten unless asked.
  before = os.path.getmtime(f"{out}/rgb.png")
  again = _run(trained, "super_resolve", input_dir=inputs, output_dir=out)
  assert not again["written"] and len(again["existing"]) == 2
  assert os.path.getmtime(f"{out}/rgb.png") == before
  # LR inputs: the output is `factor` times larger (here several tiles of the 32x32 model).
  lr_out = str(tmp_path / "lr_out")
  result = _run(trained, "super_resolve", input_dir=inputs, output_dir=lr_out, input_is_lr=True)
  assert np.asarray(Image.open(f"{lr_out}/grey.png")).shape == (80, 112, 3)


def test_super_resolution_modes_need_an_image_conditioned_model():
  from digits_configs import digits_config
  from shortcut_jax.evaluators import super_resolution
  exp = experiment.build_experiment(digits_config("smoke"), image_shape=(16, 16, 1))
  with pytest.raises(ValueError, match="not a super-resolution model"):
    super_resolution.check_super_resolution_model(exp)


def test_sr_metrics_on_a_benchmark_folder(trained, tmp_path):
  hr_dir = tmp_path / "Set2"
  hr_dir.mkdir()
  rng = np.random.default_rng(1)
  big = rng.integers(0, 255, (42, 37, 3), np.uint8)  # Cropped to 40x36 (a multiple of 4).
  Image.fromarray(big).save(hr_dir / "a.png")
  Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(hr_dir / "tiny.png")
  results = _run(trained, "sr_metrics", steps=[1], input_dir=str(hr_dir))
  assert results["num_images"] == 1 and "tiny.png" in results["skipped"]
  assert results["crop_border"] == 4
  # Bicubic, scored as SR papers do (mod crop, 4-pixel border shaved), recomputed here.
  hr = low_res.mod_crop(big.astype(np.float32) / 127.5 - 1, 4)
  expected = sr_quality.sr_metrics(hr[None], low_res.cond_image(hr, 4)[None], crop_border=4)
  for k, v in expected.items():
    assert results["bicubic"][k] == pytest.approx(v, rel=1e-5)
  # The model's entry scores its whole-image output, the one super_resolve writes.
  out = str(tmp_path / "out")
  _run(trained, "super_resolve", input_dir=str(hr_dir), output_dir=out)
  written = np.asarray(Image.open(f"{out}/a.png"), np.float32) / 127.5 - 1
  scored = sr_quality.sr_metrics(hr[None], written[None], crop_border=4)
  assert results["steps"]["1"]["psnr_rgb"] == pytest.approx(scored["psnr_rgb"], rel=1e-4)
  with open(os.path.join(trained, "sr_metrics_Set2.json")) as f:
    assert json.load(f)["per_image"]["a.png"]["bicubic"] == results["per_image"]["a.png"]["bicubic"]
