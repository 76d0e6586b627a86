"""The paper's latent-space runs end to end, on this CPU and without downloaded files.

* The original's checkpoints with the paper's latent shapes (a DiT on 32x32x4 latents with 1000
  classes), written here in the original's pickle format: `tools.import_original` with
  `configs/imagenet_dit_b.py`, then decoded RGB samples, FID, and resumed training (stopped by
  the missing ImageNet with the prepare command; resumed on an image folder with the same 1000
  classes).
* `:smoke` of the paper configs (DiT-B and the one-step frontier's iSM, iMF and alpha-Flow):
  train then `--mode=sample` writes RGB images; they build with patch 2 on the latent.
* Without `:smoke`: missing VAE weights and missing ImageNet are clear errors before compiling.
* The online-encoding train step equals encoding by hand then the pixel-free step.

The DiT is tiny (hidden 32, depth 1) and the VAE is `vae.random_init` (the tiny random VAE,
factor 2: 64x64x3 images <-> 32x32x4 latents), so nothing needs weights on disk. Inception is
random (tests/test_fid_eval.py) and resizes to 75x75.
"""

import importlib
import json
import os
import pathlib
import pickle
import subprocess
import sys
import time
import types

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from digits_configs import override
from shortcut_jax import evaluation
from shortcut_jax import latents as latents_lib
from shortcut_jax.train import train_step as train_step_lib
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.checkpoints.manager import CheckpointManager
from shortcut_jax.data import errors as data_errors
from shortcut_jax.evaluators import fid
from shortcut_jax.evaluators import fid_evaluator
from shortcut_jax.models import inception
from shortcut_jax.models.vae_weights import VAEWeightsNotFoundError
from shortcut_jax.tools.import_original import import_original

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compile")]

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP, ADAM_COUNT = 6, 5  # As in the original's fixture: five updates, saved at step 6.
LATENT_SHAPE = (32, 32, 4)
NUM_CLASSES = 1000
# A tiny DiT and the tiny random VAE on 64x64 images: the paper's 32x32x4 latents.
TINY_LATENT_RUN = dict(model__hidden_size=32, model__depth=1, model__num_heads=2,
                       model__dtype="float32", data__image_size=64, vae__random_init=True,
                       batch_size=8, checkpoint__async_save=False)


def paper_config(name, arg=None, **changes):
  """`configs/<name>.py` (`arg`: 'smoke' or None), unlocked, with `changes` applied."""
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  c.unlock()
  return override(c, **changes)


def cli_flags(changes):
  return [f"--config.{key.replace('__', '.')}={value}" for key, value in changes.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def no_compiling(monkeypatch):
  """Makes building the train step fail: errors must come before it."""
  def refuse(*args, **kwargs):
    raise AssertionError("the train step was built: the error came too late")
  monkeypatch.setattr(train_step_lib, "make_train_step", refuse)


# --- a checkpoint in the original's format -------------------------------------------------

def _unpicklable(*args):
  raise AssertionError("stands for jax 0.4's _reconstruct_array; only pickled")


_NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]
# Objects pickled under the names jax 0.4.23 / numpy 1.x wrote (the original's environment).
_ORIGINAL_NAMES = {_unpicklable: ("jax._src.array", "_reconstruct_array"),
                   _NUMPY_RECONSTRUCT: ("numpy.core.multiarray", "_reconstruct")}


class _OriginalPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles numpy arrays as jax 0.4.23 pickled its Arrays:
  `jax._src.array._reconstruct_array(numpy.core.multiarray._reconstruct, args, state,
  {'weak_type', 'named_shape'})` (the records tests/test_legacy_checkpoint.py's fixture holds)."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[types.FunctionType] = lambda self, obj: self.save_global(obj)

  def reducer_override(self, obj):
    if isinstance(obj, np.ndarray):
      fun, args, state = obj.__reduce__()
      return _unpicklable, (fun, args, state, {"weak_type": False, "named_shape": {}})
    return NotImplemented

  def save_global(self, obj, name=None):
    where = _ORIGINAL_NAMES.get(obj)
    if where is None:
      return super().save_global(obj, name)
    self.save(where[0])
    self.save(where[1])
    self.write(pickle.STACK_GLOBAL)
    self.memoize(obj)


def write_original_checkpoint(path, config, seed=1):
  """A train state of the config's DiT on 32x32x4 latents in the original's pickle format;
  returns its numpy trees."""
  exp = experiment.build_experiment(config, image_shape=LATENT_SHAPE)
  params = jax.tree.map(np.asarray, jax.device_get(exp.network.init(jax.random.PRNGKey(seed))))
  rng = np.random.default_rng(seed)
  like = lambda scale, f=lambda x: x: jax.tree.map(
      lambda p: f(scale * rng.normal(size=p.shape)).astype(np.float32), params)
  params = jax.tree.map(np.add, params, like(0.01))  # The biases and zero-inits are trained.
  ema = jax.tree.map(np.add, params, like(0.01))
  adam = optax.ScaleByAdamState(count=np.asarray(ADAM_COUNT, np.int32), mu=like(1e-3),
                                nu=like(1e-6, np.abs))
  state = {"params": params, "params_ema": ema, "step": np.asarray(STEP, np.int32),
           "opt_state": ((adam, optax.EmptyState(), optax.EmptyState()),)}
  with open(path, "wb") as f:
    _OriginalPickler(f, protocol=4).dump({"train_state": state, "_timestamp": time.time()})
  return state


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  """(path, state) of a latent-space checkpoint of the original code."""
  path = tmp_path_factory.mktemp("original") / "imagenet_dit_tiny.pkl"
  state = write_original_checkpoint(path, paper_config("imagenet_dit_b", **TINY_LATENT_RUN))
  return str(path), state


@pytest.fixture(scope="module")
def imported(original, tmp_path_factory):
  """The checkpoint imported with the command line the docs give, into a fresh workdir."""
  workdir = str(tmp_path_factory.mktemp("imported") / "w")
  result = subprocess.run(
      [sys.executable, "-m", "shortcut_jax.tools.import_original", f"--checkpoint={original[0]}",
       "--config=configs/imagenet_dit_b.py", f"--workdir={workdir}", *cli_flags(TINY_LATENT_RUN)],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"imported step {STEP}" in result.stdout
  return workdir


def _adam(opt_state):
  [adam] = [n for n in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(
      n, optax.ScaleByAdamState)) if isinstance(n, optax.ScaleByAdamState)]
  return adam


def test_written_checkpoint_has_the_original_records(original):
  data = pathlib.Path(original[0]).read_bytes()
  assert b"jax._src.array" in data and b"numpy.core.multiarray" in data
  assert b"named_shape" in data and b"optax._src.transform" in data


def test_import_keeps_latent_shapes_weights_and_optimizer(original, imported):
  exp, state, step = experiment.restore_experiment(imported)
  assert step == STEP and int(state.step) == STEP
  assert exp.image_shape == LATENT_SHAPE
  assert exp.config.data.latents == "online" and exp.config.data.num_classes == NUM_CLASSES
  assert exp.config.model.patch_size == 2
  expected = original[1]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), expected["params"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params),
               expected["params_ema"])
  adam, original_adam = _adam(state.opt_state), expected["opt_state"][0][0]
  assert int(adam.count) == ADAM_COUNT
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(adam.nu), original_adam.nu)


def test_imported_checkpoint_samples_decoded_rgb(imported):
  written = evaluation.run("sample", imported, steps=[1, 2], num_samples=3, cfg_scale=1.5,
                           batch_size=3)
  for n in (1, 2):
    with np.load(written[n]) as f:
      images, labels = f["images"], f["labels"]
    # 32x32x4 latents decoded by the factor-2 VAE: 64x64 RGB.
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 0 and labels.shape == (3,) and labels.max() < NUM_CLASSES
    with Image.open(os.path.join(imported, "samples", f"grid_{n}.png")) as grid:
      assert grid.mode == "RGB"


def random_inception_weights(path, seed=0, gain=2.0):
  """Random He-scaled Inception weights (as tests/test_fid_eval.py writes them)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in inception.expected_variable_shapes().items():
    if key.endswith("kernel"):
      flat[key] = rng.normal(size=shape) * gain / np.sqrt(np.prod(shape[:-1]))
    else:
      flat[key] = np.ones(shape) if key.endswith(("var", "scale")) else np.zeros(shape)
  inception.save_inception_variables(path, inception.unflatten_variables(
      {k: v.astype(np.float32) for k, v in flat.items()}))
  return path


def test_imported_checkpoint_fid(imported, tmp_path, monkeypatch):
  load = fid_evaluator.load_features
  monkeypatch.setattr(fid_evaluator, "load_features",
                      lambda *args, **kwargs: load(*args, **dict(kwargs, image_size=75)))
  weights = random_inception_weights(str(tmp_path / "inception_random.npz"))
  features = np.random.default_rng(1).normal(size=(64, 2048))
  stats = str(tmp_path / "synthetic_stats.npz")
  fid.save_stats(stats, features.mean(0), np.cov(features, rowvar=False))
  # The distance of the first 256 features (milliseconds; a 2048-d one costs seconds per entry
  # here, and tests/test_fid_eval.py checks a whole one).
  real = fid.fid_from_stats
  monkeypatch.setattr(fid, "fid_from_stats", lambda mu1, s1, mu2, s2, **kwargs: real(
      mu1[:256], s1[:256, :256], mu2[:256], s2[:256, :256], **kwargs))
  out = evaluation.run("fid", imported, steps=[1], num_samples=6, cfg_scale=1.5, batch_size=6,
                       fid_stats=stats, inception_path=weights)
  with open(os.path.join(imported, "fid.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(out))
  # The original's protocol (the imported config's evals.fid.protocol): 1 step at cfg 1, and
  # cfg 1.5 at denoise_timesteps steps, from the online weights.
  assert written["protocol"] == "original" and written["weights"] == "online"
  assert list(written["steps"]) == ["1", "128_cfg1.5"]
  assert all(np.isfinite(v) and v > 0 for v in written["steps"].values())
  assert written["checkpoint_step"] == STEP and written["num_samples"] == 6


def test_resuming_the_imported_imagenet_run_without_imagenet(original, tmp_path, no_compiling):
  config = paper_config("imagenet_dit_b", **TINY_LATENT_RUN)
  workdir = str(tmp_path / "w")
  import_original(original[0], config, workdir)
  config = experiment.load_config(workdir)
  config.data.data_dir = str(tmp_path / "no_tfds")
  with pytest.raises(data_errors.DataNotPreparedError,
                     match=r"(?s)imagenet256.*python -m shortcut_jax.data.prepare --dataset imagenet256"):
    trainer.train_and_evaluate(config, workdir)
  assert CheckpointManager(workdir, read_only=True).latest_step() == STEP


def _folder_of_classes(root, num_classes, size=8):
  """`root/train/<class>/0.png` for `num_classes` classes: a dataset with the label table of
  the ImageNet checkpoint, built in seconds."""
  rng = np.random.default_rng(0)
  for i in range(num_classes):
    folder = root / "train" / f"c{i:04d}"
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(folder / "0.png")
  return str(root)


def test_resume_from_imported_checkpoint(original, tmp_path, data_dir):
  config = paper_config("imagenet_dit_b", **TINY_LATENT_RUN, data__name="image_folder",
                        data__folder=_folder_of_classes(tmp_path / "images", NUM_CLASSES),
                        data__data_dir=data_dir, max_steps=STEP + 2, log_every=1,
                        **{f"evals__{name}__every": 0 for name in ("samples", "loss_per_t",
                                                                    "validation", "fid")})
  workdir = str(tmp_path / "w")
  assert import_original(original[0], config, workdir) == STEP
  metrics = trainer.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics["train/loss"])
  lines = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "train/loss" in l] == [STEP + 1, STEP + 2]

  _, state, step = experiment.restore_experiment(workdir)
  assert step == STEP + 2 and int(_adam(state.opt_state).count) == ADAM_COUNT + 2
  # Two AdamW steps at lr 1e-4 from the imported weights and moments: moved, but only by about
  # 1e-4 per weight (a fresh initialisation is ~0.01 away: the noise added to the original's).
  params, imported = jax.device_get(state.params), original[1]["params"]
  kernel = lambda p: p["DiTBlock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
  moved = np.abs(kernel(params) - kernel(imported))
  assert 0 < moved.max() < 3e-3 and moved.mean() < 4e-4


# --- the paper configs' :smoke and their errors without it ---------------------------------

@pytest.mark.parametrize("name,cfg_scale", [
    ("imagenet_dit_b", None),
    # The one-step frontier's paper configs: the guidance input (iSM, iMF) and alpha-Flow.
    ("imagenet_ism_xl", 2.0), ("imagenet_imf_b", 2.0), ("imagenet_alphaflow_xl", None)])
def test_imagenet_smoke_trains_then_samples_rgb(name, cfg_scale, tmp_path, data_dir):
  config = paper_config(name, "smoke", data__data_dir=data_dir, checkpoint__async_save=False)
  trainer.train_and_evaluate(config, str(tmp_path))
  written = evaluation.run("sample", str(tmp_path), steps=[1, 2], num_samples=4,
                           cfg_scale=cfg_scale, batch_size=4)
  for n in (1, 2):
    with np.load(written[n]) as f:
      images = f["images"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    with Image.open(tmp_path / "samples" / f"grid_{n}.png") as grid:
      assert grid.mode == "RGB"


@pytest.mark.parametrize("name", ["celebahq_dit_b", "imagenet_dit_b", "imagenet_dit_xl"])
def test_smoke_configs_build_patch_2_on_latents(name, data_dir):
  config = paper_config(name, "smoke", data__data_dir=data_dir)
  assert config.data.name == "photos" and config.vae.random_init
  assert config.data.latents == "online" and config.model.patch_size == 2
  exp = experiment.build_experiment(config)
  assert exp.image_shape == (16, 16, 4)  # 32x32 photos through the factor-2 VAE.
  kernel = exp.abstract_state().params["PatchEmbed_0"]["Conv_0"]["kernel"]
  assert kernel.shape == (2, 2, 4, config.model.hidden_size)


@pytest.mark.parametrize("name", ["celebahq_dit_b", "imagenet_dit_b", "imagenet_dit_xl"])
def test_missing_vae_weights_stop_before_compiling(name, tmp_path, data_dir, no_compiling):
  empty = tmp_path / "vae"
  empty.mkdir()
  # The paper config as it is (data swapped for one that exists here), no VAE files.
  config = paper_config(name, data__name="photos", data__num_classes=1, data__image_size=128,
                        data__data_dir=data_dir, vae__path=str(empty))
  with pytest.raises(VAEWeightsNotFoundError,
                     match=r"(?s)config.json.*stabilityai/sd-vae-ft-mse.*SHORTCUT_JAX_VAE"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_missing_imagenet_stops_before_compiling(tmp_path, no_compiling):
  config = paper_config("imagenet_dit_b", **TINY_LATENT_RUN, data__data_dir=str(tmp_path / "tfds"))
  with pytest.raises(data_errors.DataNotPreparedError,
                     match=r"(?s)train/n01440764.*--dataset imagenet256 --manual_dir"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))


# --- the online train step -----------------------------------------------------------------

def test_online_train_step_equals_encoding_then_latent_step(data_dir):
  config = paper_config("imagenet_dit_b", "smoke", data__data_dir=data_dir)
  exp = experiment.build_experiment(config)
  encoder = exp.encoder
  vae = encoder.vae
  assert encoder.mode == "online" and vae is latents_lib.vae_from_config(config)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (config.batch_size, 32, 32, 3)).astype(np.float32)
  batch = {"image": images, "label": np.zeros(config.batch_size, np.int32)}
  state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
  state = state.replace(step=state.step + 3)  # Any step: the key depends on it.

  # The key the train step draws the posterior sample with (train_step.prepare_batch).
  step_key = jax.random.fold_in(state.rng, state.step)
  latent_key = jax.random.fold_in(step_key, train_step_lib._LATENT_SALT)  # pylint: disable=protected-access
  manual = np.asarray(vae.sample_latents(*vae.posterior(images), latent_key))
  assert manual.shape == (config.batch_size, 16, 16, 4)
  prepared = train_step_lib.prepare_batch(batch, step_key, encoder, vae.params)
  np.testing.assert_allclose(prepared["image"], manual, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(prepared["label"], batch["label"])
  # ... and differs from the posterior mean (it is a sample) and from another key's sample.
  assert not np.allclose(manual, vae.encode(images), atol=1e-3)
  np.testing.assert_allclose(exp.prepare_batch(batch, latent_key)["image"], manual, rtol=1e-5,
                             atol=1e-5)

  make = lambda **kw: train_step_lib.make_train_step(
      exp.model, exp.objective, exp.tx, exp.lr_schedule, config.objective, config.optim.ema_rate,
      donate=False, **kw)
  latent_step = make()
  online_state, online_metrics = make(encoder=encoder, encoder_params=vae.params)(state, batch)
  latent_state, latent_metrics = latent_step(state, {"image": manual, "label": batch["label"]})
  for k, v in latent_metrics.items():
    np.testing.assert_allclose(online_metrics[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(online_state.params), jax.device_get(latent_state.params))
  # The comparison can fail: the posterior mean instead of the sample gives another loss.
  _, mean_metrics = latent_step(state, {"image": np.asarray(vae.encode(images)),
                                        "label": batch["label"]})
  assert not np.isclose(mean_metrics["train/loss"], online_metrics["train/loss"], rtol=1e-4)
