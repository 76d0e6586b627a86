"""End-to-end training on the embedded digits: smoke run, exact resumption, SIGTERM, NaN stop,
a checkpoint that does not match the config, and importing the original's checkpoint."""

import json
import os
import signal

import jax
import numpy as np
import pytest

import digits_configs
import run_checks
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.checkpoints.manager import CheckpointManager, CheckpointMismatchError
from shortcut_jax.data import pipeline

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compile")]


def smoke_config(**changes):
  return digits_configs.smoke_config(os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR"), **changes)


@pytest.fixture(scope="session", autouse=True)
def shared_data_dir(tmp_path_factory):
  """One TFDS data dir for the whole session (the digits builder runs once)."""
  path = str(tmp_path_factory.mktemp("tfds"))
  os.environ["SHORTCUT_JAX_TEST_DATA_DIR"] = path
  yield path


def _params(workdir):
  exp, state, step = experiment.restore_experiment(workdir)
  return jax.device_get(state.params), jax.device_get(state.ema_params), step


def test_smoke_run_writes_everything(tmp_path):
  c = smoke_config(evals__samples__every=4, evals__loss_per_t__every=4, evals__validation__every=4)
  metrics = trainer.train_and_evaluate(c, str(tmp_path))
  for key in ("train/loss", "train/loss_flow", "train/loss_bootstrap", "train/grad_norm",
              "train/param_norm", "train/update_norm", "train/lr"):
    assert key in metrics and np.isfinite(metrics[key])
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "train/loss" in l] == [2, 4]
  assert any("val/loss" in l for l in lines) and any("loss_per_t/level_0" in l for l in lines)
  assert json.loads((tmp_path / "config.json").read_text())["objective"]["name"] == "shortcut"
  grids = sorted(os.listdir(tmp_path / "samples" / "step_4"))
  assert "grid_1steps.png" in grids and "grid_8steps_cfg1.5.png" in grids
  assert (tmp_path / "plots" / "loss_per_t_4.png").exists()
  # TensorBoard's events, read back by TensorFlow's own reader: what metrics.jsonl holds.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  events = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  assert len(events) == 1
  scalars = {}
  for e in tf.compat.v1.train.summary_iterator(str(tmp_path / events[0])):
    for v in e.summary.value:
      scalars[(e.step, v.tag)] = v.simple_value
  for l in lines:
    for k, v in l.items():
      if k != "step":
        np.testing.assert_allclose(scalars.pop((l["step"], k)), v, rtol=1e-6)
  assert not scalars
  assert CheckpointManager(str(tmp_path), read_only=True).latest_step() == 4
  from PIL import Image  # pylint: disable=g-import-not-at-top
  run_checks.check_fingerprint("digits_shortcut:smoke", tmp_path, {
      name: np.asarray(Image.open(tmp_path / "samples" / "step_4" / name))
      for name in ("grid_1steps.png", "grid_8steps_cfg1.5.png")})


class _StopAfter:
  """Wraps make_dataset so that the n-th batch request raises or signals."""

  def __init__(self, monkeypatch, n, action):
    original = pipeline.make_dataset

    def make(*args, **kwargs):
      it = original(*args, **kwargs)
      for i, batch in enumerate(it):
        if i == n:
          action(batch)
        yield batch
    monkeypatch.setattr(pipeline, "make_dataset", make)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
  # With the iSM switches on: the twin-EMA teacher is objective state that must resume too, and
  # the sOT noise of groups of 3 batches (steps 1-3, 4-6) is resumed mid-group (at step 2).
  c = smoke_config(max_steps=6, checkpoint__every_steps=2, objective__target_ema_rate=0.5,
                   objective__wavelet_levels=5, objective__ot_pool=3)
  trainer.train_and_evaluate(c, str(tmp_path / "straight"))

  def crash(batch):
    raise KeyboardInterrupt("simulated kill")
  with monkeypatch.context() as m:
    # Dies while the input makes its 5th batch (the second group's 2nd, read before step 4):
    # steps 1-3 ran, 2 is saved.
    _StopAfter(m, 4, crash)
    with pytest.raises(KeyboardInterrupt):
      trainer.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert CheckpointManager(str(tmp_path / "resumed"), read_only=True).latest_step() == 2
  trainer.train_and_evaluate(c, str(tmp_path / "resumed"))

  p1, e1, s1 = _params(str(tmp_path / "straight"))
  p2, e2, s2 = _params(str(tmp_path / "resumed"))
  assert s1 == s2 == 6
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  jax.tree.map(np.testing.assert_array_equal, e1, e2)
  (_, a, _), (_, b, _) = (experiment.restore_experiment(str(tmp_path / n))
                          for n in ("straight", "resumed"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.objective_state),
               jax.device_get(b.objective_state))
  twin = jax.device_get(a.objective_state["target_ema"])  # between the online and slow EMA
  for other in (p1, e1):
    assert not np.allclose(twin["FinalLayer_0"]["Dense_1"]["kernel"],
                           other["FinalLayer_0"]["Dense_1"]["kernel"])
  # ... and training really moved the weights (the comparison can fail).
  fresh = jax.device_get(jax.jit(experiment.build_experiment(c).init_state)(jax.random.PRNGKey(c.seed)).params)
  assert not np.allclose(fresh["DiTBlock_0"]["Dense_1"]["kernel"], p1["DiTBlock_0"]["Dense_1"]["kernel"])


def test_sigterm_saves_and_exits(tmp_path, monkeypatch):
  c = smoke_config(max_steps=50, checkpoint__every_steps=40)
  _StopAfter(monkeypatch, 2, lambda batch: os.kill(os.getpid(), signal.SIGTERM))
  trainer.train_and_evaluate(c, str(tmp_path))
  assert CheckpointManager(str(tmp_path), read_only=True).latest_step() == 3


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  c = smoke_config(max_steps=8, checkpoint__every_steps=2, log_every=4)

  def poison(batch):
    batch["image"][:] = np.nan
  _StopAfter(monkeypatch, 4, poison)  # the 5th step sees NaN images
  with pytest.raises(trainer.NonFiniteMetricError, match="train/loss"):
    trainer.train_and_evaluate(c, str(tmp_path))
  ckpt = CheckpointManager(str(tmp_path), read_only=True)
  assert ckpt.latest_step() == 4
  _, state, _ = experiment.restore_experiment(str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_checkpoint_that_does_not_match_config(tmp_path):
  c = smoke_config(max_steps=2)
  trainer.train_and_evaluate(c, str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  bigger = smoke_config(max_steps=4, model__hidden_size=64)
  with pytest.raises(CheckpointMismatchError, match="hidden|DiTBlock_0|PatchEmbed"):
    trainer.train_and_evaluate(bigger, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_import_original_then_sample(tmp_path, original_fixture_dir):
  from shortcut_jax import evaluation
  from shortcut_jax.tools.import_original import import_original
  meta = json.loads((original_fixture_dir / "original_dit_small_meta.json").read_text())
  io = np.load(original_fixture_dir / "original_dit_small_io.npz")
  a = meta["dit_args"]
  c = smoke_config()
  c.model.update(patch_size=a["patch_size"], hidden_size=a["hidden_size"], depth=a["depth"],
                 num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"], dtype="float32")
  c.data.update(image_size=meta["input_shape"][0], num_classes=a["num_classes"])
  c.objective.update(denoise_timesteps=128, class_dropout_prob=a["class_dropout_prob"])
  step = import_original(str(original_fixture_dir / "original_dit_small.pkl"), c, str(tmp_path))
  assert step == meta["step"]
  exp, state, restored_step = experiment.restore_experiment(str(tmp_path))
  assert restored_step == step
  # The imported EMA weights give the original's outputs.
  out = exp.module.apply({"params": state.ema_params}, io["x"], io["t"], io["dt_base"], io["y"])
  np.testing.assert_allclose(np.asarray(out), io["out_f32_params_ema"], atol=2e-5)
  written = evaluation.run("sample", str(tmp_path), steps=[1, 3], num_samples=5, cfg_scale=1.5)
  for n in (1, 3):
    with np.load(written[n]) as f:
      assert f["images"].shape == (5, 8, 8, 4) and f["images"].dtype == np.uint8
      assert list(f["labels"]) == [0, 1, 2, 3, 4]
    assert (tmp_path / "samples" / f"grid_{n}.png").exists()
  # A config that does not describe the checkpoint is refused before anything is written.
  c2 = smoke_config()
  with pytest.raises(CheckpointMismatchError):
    import_original(str(original_fixture_dir / "original_dit_small.pkl"), c2, str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / "checkpoints").exists() or not os.listdir(tmp_path / "bad" / "checkpoints")
