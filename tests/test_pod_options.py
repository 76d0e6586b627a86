"""Options a pod user expects: gradient clipping by global norm, a weight-decay mask, profiling
steps N..M into the workdir, and a Weights & Biases writer next to TensorBoard.

The defaults are the original's optimizer exactly (no clipping, decay everything: the same
optax state tree). W&B is checked with a stand-in `wandb` module, and against the real package
(offline mode) only where it is installed.
"""

import glob
import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import digits_configs
from shortcut_jax import config as config_lib
from shortcut_jax import metric_log
from shortcut_jax.train import train_state
from shortcut_jax import experiment
from shortcut_jax.train import trainer


def optim(**changes):
  c = config_lib.base_config().optim
  c.update(changes)
  return c


def test_defaults_are_the_original_adamw():
  c = config_lib.base_config()
  assert c.optim.grad_clip_norm == 0 and c.optim.weight_decay_mask == "all"
  assert c.profile_steps == () and c.wandb.project is None
  params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
  tx, _ = train_state.make_optimizer(c.optim, 100)
  original = optax.adamw(optax.constant_schedule(1e-4), b1=0.9, b2=0.999, weight_decay=0.1)
  assert (jax.tree.structure(tx.init(params)) == jax.tree.structure(original.init(params)))
  grads = jax.tree.map(lambda p: 0.3 * p, params)
  jax.tree.map(np.testing.assert_array_equal, tx.update(grads, tx.init(params), params)[0],
               original.update(grads, original.init(params), params)[0])


def test_grad_clip_norm_rescales_gradients_to_the_global_norm():
  params = {"a": jnp.zeros((4,)), "b": jnp.zeros((2, 2))}
  grads = {"a": jnp.full((4,), 3.0), "b": jnp.full((2, 2), 4.0)}  # Global norm 10.
  tx, _ = train_state.make_optimizer(optim(grad_clip_norm=1.0, b1=0.5), 100)
  state = tx.init(params)
  _, state = tx.update(grads, state, params)
  adam = state[1][0]
  assert isinstance(adam, optax.ScaleByAdamState)
  # The first moment saw the clipped gradient: (1 - b1) * g * (1 / 10).
  jax.tree.map(lambda m, g: np.testing.assert_allclose(m, 0.5 * g / 10.0, rtol=1e-6),
               adam.mu, grads)
  # A gradient already inside the norm passes unchanged.
  small = jax.tree.map(lambda g: g / 100.0, grads)
  _, state = tx.update(small, tx.init(params), params)
  jax.tree.map(lambda m, g: np.testing.assert_allclose(m, 0.5 * g, rtol=1e-6),
               state[1][0].mu, small)


def test_weight_decay_mask_leaves_biases_norms_and_embeddings_alone():
  exp = experiment.build_experiment(digits_configs.smoke_config("/nonexistent"),
                                 image_shape=(16, 16, 1))
  params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), exp.abstract_state().params)
  params["LayerNorm_0"] = {"scale": jnp.ones((3,)), "bias": jnp.ones((3,))}
  params["final_norm"] = {"weight": jnp.ones((3,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  names = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)

  def decayed(kind):
    # lr 1, zero gradients: the update is -weight_decay * param exactly where decay applies.
    tx, _ = train_state.make_optimizer(optim(lr=1.0, weight_decay=0.1, weight_decay_mask=kind),
                                       100)
    updates, _ = tx.update(zero, tx.init(params), params)
    flat = jax.tree_util.tree_leaves_with_path(updates)
    return {names(p): bool(np.all(np.asarray(u) != 0)) for p, u in flat}

  everything = decayed("all")
  assert all(everything.values())  # The original: every parameter decays.
  masked = decayed("no_bias_norm_embed")
  kept = sorted(k for k, v in masked.items() if not v)
  assert kept and all(k.endswith(("bias", "embedding")) or "LayerNorm_0" in k
                      or "final_norm" in k for k in kept), kept
  assert "LabelEmbedder_0/Embed_0/embedding" in kept and "LayerNorm_0/scale" in kept
  assert all(masked[k] for k in masked if k.endswith("kernel")), masked
  assert train_state.is_decayed(("DiTBlock_0", "Dense_0", "kernel"))
  assert not train_state.is_decayed(("DiTBlock_0", "Dense_0", "bias"))


@pytest.mark.parametrize("changes,match", [
    ({"optim__grad_clip_norm": -1.0}, "optim.grad_clip_norm must be a number >= 0"),
    ({"optim__weight_decay_mask": "biases"}, "optim.weight_decay_mask must be one of"),
    ({"profile_steps": (5, 2)}, r"profile_steps must be \(\) \(off\) or \(N, M\)"),
    ({"profile_steps": (0, 2)}, r"profile_steps must be"),
    ({"wandb__mode": "sometimes"}, "wandb.mode must be"),
])
def test_bad_values_are_rejected_naming_the_field(changes, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(digits_configs.smoke_config("/nonexistent", **changes))


class _FakeRun:

  def __init__(self, **kwargs):
    self.kwargs, self.logged, self.finished = kwargs, [], False
    self.config = types.SimpleNamespace(update=lambda *a, **k: None)

  def log(self, values, step):
    self.logged.append((step, dict(values)))

  def finish(self):
    self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
  runs = []
  module = types.ModuleType("wandb")
  module.init = lambda **kwargs: runs.append(_FakeRun(**kwargs)) or runs[-1]
  module.util = types.SimpleNamespace(generate_id=lambda: "fakeid42")
  monkeypatch.setitem(sys.modules, "wandb", module)
  return runs


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile_test")  # Compiling is most of a smoke run.
def test_clip_mask_profile_and_wandb_in_a_training_run_that_resumes(tmp_path, fake_wandb):
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path / "tfds")
  workdir = str(tmp_path / "w")
  changes = dict(max_steps=4, log_every=1, checkpoint__every_steps=4, profile_steps=(2, 3),
                 optim__grad_clip_norm=0.5, optim__weight_decay_mask="no_bias_norm_embed",
                 wandb__project="shortcut-test", wandb__mode="offline")
  config = digits_configs.smoke_config(data_dir, **changes)
  config_lib.validate(config)
  metrics = trainer.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics["train/loss"])

  # Profile: one trace (TensorBoard layout) under workdir/profile.
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1, traces

  # W&B: the scalars TensorBoard got, at the logged steps; the run closed; its id kept.
  [run] = fake_wandb
  assert run.finished and run.kwargs["project"] == "shortcut-test"
  assert run.kwargs["mode"] == "offline" and run.kwargs["id"] == "fakeid42"
  assert run.kwargs["config"]["optim"]["grad_clip_norm"] == 0.5
  steps = [s for s, v in run.logged if "train/loss" in v]
  assert steps == [1, 2, 3, 4]
  logged = dict(run.logged)[4]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.read().splitlines()[-1])
  assert logged["train/loss"] == pytest.approx(last["train/loss"])

  # Resume with the same options (the chained, masked optimizer state restores) and more steps.
  config = digits_configs.smoke_config(data_dir, **dict(changes, max_steps=6, profile_steps=()))
  trainer.train_and_evaluate(config, workdir)
  assert fake_wandb[1].kwargs["id"] == "fakeid42"  # The same W&B run continues.
  assert [s for s, v in fake_wandb[1].logged if "train/loss" in v] == [5, 6]
  _, state, step = experiment.restore_experiment(workdir)
  assert step == 6 and isinstance(state.opt_state[1][0], optax.ScaleByAdamState)


def test_wandb_project_without_the_package_warns_and_trains_on(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError.
  config = digits_configs.smoke_config("/nonexistent", wandb__project="p")
  assert metric_log.make_wandb(config, str(tmp_path)) is None
  assert metric_log.make_wandb(digits_configs.smoke_config("/nonexistent"),
                                   str(tmp_path)) is None  # No project: off.


def test_real_wandb_offline(tmp_path):
  wandb = pytest.importorskip("wandb")
  del wandb
  config = digits_configs.smoke_config("/nonexistent", wandb__project="p", wandb__mode="offline")
  writer = metric_log.make_wandb(config, str(tmp_path))
  writer.write(1, {"train/loss": 0.5})
  writer.close()
  assert glob.glob(os.path.join(str(tmp_path), "wandb", "*"))
