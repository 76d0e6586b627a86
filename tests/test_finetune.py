"""Starting a run from another run's weights (`config.init`, `shortcut_jax.train.finetune`): a naive
(flow-matching) smoke run fine-tuned into a shortcut model starts as the source model — the same
velocity at the finest level and at every other — with a fresh optimizer at step 0, then trains
its new step-size input; a resume ignores `init` with a notice; a source that is missing, of
another network or shape, or beside a teacher is a clear error before anything is written."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import digits_configs
from shortcut_jax.core import guidance
from shortcut_jax.train import finetune
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.train import initialisation
from shortcut_jax.checkpoints.manager import CheckpointManager


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A 4-step naive smoke run (its DiT ignores the step size) at a learning rate that moves its
  zero-initialised modulation and output layers well away from zero, so that the conditioning
  vector, the step size's embedding included, shows in its velocity."""
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("naive"))
  c = digits_configs.quick_run_config("digits_naive", data_dir, 4)
  trainer.train_and_evaluate(digits_configs.override(c, optim__lr=3e-3), workdir)
  return workdir, data_dir


def _config(source_workdir, data_dir, **changes):
  c = digits_configs.quick_run_config("digits_shortcut", data_dir, 2)
  c.init.workdir = source_workdir
  return digits_configs.override(c, **changes)


def _start(config, workdir):
  exp = experiment.build_experiment(config)
  ckpt = CheckpointManager(workdir)
  try:
    state, step = initialisation.restore_or_init(exp, ckpt)
  finally:
    ckpt.close()
  return exp, state, step


# The fine-tuned model adds a guidance input (and trains it with intrinsic guidance and a twin
# EMA teacher, improved shortcut models): it too starts as nothing, at every guidance scale.
ISM = dict(model__guidance_input=True, objective__guidance_max=2.0, objective__target_ema_rate=0.9)


def test_fine_tuned_shortcut_model_starts_as_its_naive_source(source, tmp_path):
  source_dir, data_dir = source
  config = _config(source_dir, data_dir, init__weights="online", **ISM)
  exp, state, step = _start(config, str(tmp_path / "tuned"))
  src_exp, src, _ = experiment.restore_experiment(source_dir)
  assert step == 0 and int(state.step) == 0
  assert not src_exp.objective.uses_level and exp.objective.uses_level
  # Fresh optimizer; online and EMA weights both the source's online weights.
  assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(state.opt_state))
  jax.tree.map(np.testing.assert_array_equal, state.params, state.ema_params)
  np.testing.assert_array_equal(state.params["DiTBlock_0"]["Dense_0"]["kernel"],
                                src.params["DiTBlock_0"]["Dense_0"]["kernel"])
  for name in (finetune.STEP_SIZE_EMBEDDER, "GuidanceEmbedder_0"):
    out = state.params[name]["Dense_1"]
    assert float(jnp.abs(out["kernel"]).max()) == 0  # A new input's output layer starts at 0.
  # The twin-EMA teacher starts as the new weights, not as a fresh initialisation.
  jax.tree.map(np.testing.assert_array_equal, state.objective_state["target_ema"], state.params)

  rng = np.random.default_rng(0)
  n = 6
  x = jnp.asarray(rng.normal(size=(n, *exp.image_shape)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=n), jnp.float32)
  cond = {"label": jnp.arange(n) % 10}
  want = src_exp.model(src.params, x, t, jnp.zeros(n, jnp.int32), cond)
  scale = float(jnp.abs(want).max())
  finest = int(np.log2(config.objective.denoise_timesteps))
  for level, w in ((finest, None), (0, None), (1, 2.5), (finest, 2.5)):
    got = guidance.guided_velocity(exp.model, state.params, x, t,
                                   jnp.full((n,), level, jnp.int32), cond, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
  # What the step-size input's start buys: the source's weights as they are, in a network that
  # takes the step size, predict something else at the finest level; a fresh model too.
  unchanged = exp.model(dict(src.params, GuidanceEmbedder_0=state.params["GuidanceEmbedder_0"]),
                        x, t, jnp.full((n,), finest, jnp.int32), cond)
  assert float(jnp.abs(unchanged - want).max()) > 1e-3 * scale
  fresh = _start(_config(None, data_dir, **ISM), str(tmp_path / "fresh"))[1]
  other = exp.model(fresh.params, x, t, jnp.full((n,), finest, jnp.int32), cond)
  assert float(jnp.abs(other - want).max()) > 0.1 * scale


def test_fine_tuning_trains_the_step_size_input_and_a_resume_ignores_init(source, tmp_path,
                                                                          caplog):
  source_dir, data_dir = source
  workdir = str(tmp_path / "tuned")
  metrics = trainer.train_and_evaluate(_config(source_dir, data_dir), workdir)
  assert np.isfinite(metrics["train/loss"])
  _, state, step = experiment.restore_experiment(workdir)
  assert step == 2
  kernel = state.params[finetune.STEP_SIZE_EMBEDDER]["Dense_1"]["kernel"]
  assert float(jnp.abs(kernel).max()) > 0  # The gradient reached it.
  # The run's own checkpoint wins over `init`, with a notice.
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(_config(source_dir, data_dir, max_steps=3), workdir)
  assert any("init.workdir" in r.getMessage() and "ignored" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert experiment.restore_experiment(workdir)[2] == 3


@pytest.mark.parametrize("case", ["missing", "other_network", "shape", "teacher"])
def test_bad_sources_fail_before_anything_is_written(source, tmp_path, monkeypatch, case):
  source_dir, data_dir = source
  workdir = tmp_path / "new"
  if case == "missing":
    config, match = _config(str(tmp_path / "nothing"), data_dir), "holds no training run"
  elif case == "other_network":
    config, match = _config(source_dir, data_dir, model__hidden_size=64), (
        r"model.hidden_size: source 32, this run 64")
  elif case == "shape":  # Past the config check (e.g. a hand-edited config.json): by name.
    monkeypatch.setattr(finetune, "mismatches", lambda *a: [])
    config, match = _config(source_dir, data_dir, model__hidden_size=64), (
        r"PatchEmbed_0/Conv_0/kernel: checkpoint \(.*32\) vs config \(.*64\)")
  else:
    config = _config(source_dir, data_dir, objective__name="progressive",
                     objective__teacher_workdir=source_dir, objective__schedule_steps=8)
    match = "starts from its teacher"
  with pytest.raises(finetune.InitError, match=match):
    trainer.train_and_evaluate(config, str(workdir))
  assert not (workdir / "config.json").exists()
  assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
