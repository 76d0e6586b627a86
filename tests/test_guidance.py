"""The one meaning of the guidance scale and the FID protocols (`shortcut_jax.core.guidance`).

* Which (steps, guidance) entries and which weights each protocol evaluates for the paper's
  configs and the digits default.
* A config.json written before `guidance_convention` loads as 'legacy' with a one-line notice,
  and eval.py's modes read it with the old meanings and defaults.
* `eval.py --mode=fid` (`evaluation.run` with the flags not given) on an imported checkpoint of
  the original (`tools.import_original` with `configs/imagenet_dit_b.py`, a tiny pixel-space
  DiT) follows `evals.fid.*`: the original's protocol, online weights, said in its JSON and
  output; the in-training evaluator does the same.

Generation and Inception are replaced by a recorder of what would be sampled
(`fid_evaluator.model_stats`): what is checked is what gets asked for. The sampler's w = 0 / 1
calls are checked in tests/test_sampling.py, the FID pipeline itself in tests/test_fid_eval.py.
"""

import importlib
import json
import logging
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from digits_configs import override
from shortcut_jax import config as config_lib
from shortcut_jax import evaluation
from shortcut_jax.core import guidance
from shortcut_jax import experiment
from shortcut_jax.evaluators import fid_evaluator
from shortcut_jax.evaluators import conditions
from shortcut_jax.tools import import_original as import_lib

pytestmark = pytest.mark.usefixtures("fast_compile")

STEP = 6
TINY = dict(model__hidden_size=32, model__depth=1, model__num_heads=2, model__dtype="float32",
            data__image_size=8, data__latents="none", checkpoint__async_save=False)


def paper_config(name, arg=None, **changes):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  c.unlock()
  return override(c, **changes)


def entries_of(c):
  return [(e.key, e.steps, e.cfg_scale) for e in guidance.fid_entries(
      c.evals.fid.protocol, c.evals.fid.steps, c.evals.fid.cfg_scale,
      c.objective.denoise_timesteps, conditions.is_conditional(c))]


def test_protocol_entries_and_weights_of_the_configs():
  for name in ("imagenet_dit_b", "imagenet_dit_xl"):
    c = paper_config(name)
    assert c.evals.fid.protocol == "original" and c.guidance_convention == "original"
    assert entries_of(c) == [("1", 1, 1.0), ("4", 4, 1.0), ("32", 32, 1.0), ("128", 128, 1.0),
                             ("128_cfg1.5", 128, 1.5)]
    assert guidance.protocol_use_ema("original", c.evals.fid.use_ema) is False  # Online.
  # Unconditional (the original's cfg_scale = 0): the sweep with the null label, no 'cfg' entry.
  c = paper_config("celebahq_dit_b")
  assert entries_of(c) == [("1", 1, 0.0), ("4", 4, 0.0), ("32", 32, 0.0), ("128", 128, 0.0)]
  # Everything else keeps one CFG for every budget, from the EMA weights.
  c = paper_config("digits_shortcut")
  assert c.evals.fid.protocol == "guided"
  assert entries_of(c) == [("1", 1, 1.5), ("4", 4, 1.5), ("128", 128, 1.5)]
  assert guidance.protocol_use_ema("guided", c.evals.fid.use_ema) is True
  assert guidance.protocol_use_ema("original", True) is True  # An explicit choice wins.
  # The original protocol at cfg 1 has nothing to add; the guided one of an unconditional model
  # samples without guidance.
  assert guidance.fid_entries("original", (1, 2), 1.0, 8, True) == [
      guidance.Entry("1", 1, 1.0), guidance.Entry("2", 2, 1.0)]
  assert guidance.fid_entries("guided", (2,), 1.5, 8, False) == [guidance.Entry("2", 2, None)]
  c.evals.fid.protocol = "paper"
  with pytest.raises(ValueError, match="evals.fid.protocol must be one of"):
    config_lib.validate(c)


def test_scale_meanings():
  new, old = config_lib.base_config(), config_lib.base_config()
  old.guidance_convention = "legacy"
  assert [guidance.sampler_scale(new, w) for w in (None, 0.0, 1.0, 1.5)] == [None, 0.0, 1.0, 1.5]
  assert [guidance.sampler_scale(old, w) for w in (None, 0.0, 1.0, 1.5)] == [None, None, 1.0, 1.5]


# --- an imported checkpoint of the original ---------------------------------------------------

def fake_original_checkpoint(config, seed=1):
  """What `load_original_checkpoint` returns for a checkpoint of the config's DiT (8x8x3
  pixels), with EMA weights that differ from the online ones."""
  exp = experiment.build_experiment(config, image_shape=(8, 8, 3))
  state = jax.device_get(jax.jit(exp.init_state)(jax.random.PRNGKey(seed)))
  params = jax.tree.map(np.asarray, state.params)
  rng = np.random.default_rng(seed)
  ema = jax.tree.map(lambda p: (p + 0.01 * rng.normal(size=p.shape)).astype(np.float32), params)
  zeros = jax.tree.map(np.zeros_like, params)
  adam = optax.ScaleByAdamState(count=np.asarray(STEP - 1, np.int32), mu=zeros, nu=zeros)
  return {"params": params, "params_ema": ema, "opt_state": ((adam,),), "step": STEP}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A workdir imported with configs/imagenet_dit_b.py (given here with protocol 'guided': the
  importer writes the original's), and reference statistics."""
  root = tmp_path_factory.mktemp("guidance")
  config = paper_config("imagenet_dit_b", **TINY)
  config.evals.fid.protocol = "guided"
  legacy = fake_original_checkpoint(config)
  real = import_lib.load_original_checkpoint
  import_lib.load_original_checkpoint = lambda path: legacy
  try:
    import_lib.import_original(str(root / "model.pkl"), config, str(root / "imported"))
  finally:
    import_lib.load_original_checkpoint = real
  stats = str(root / "stats.npz")
  np.savez(stats, mu=np.zeros(4), sigma=np.eye(4))
  return dict(workdir=str(root / "imported"), stats=stats, legacy=legacy, root=root)


@pytest.fixture
def sampled(monkeypatch):
  """Records what FID would sample (instead of sampling it): dicts of num_images, num_steps,
  cfg_scale and a parameter leaf of the weights used."""
  calls = []

  def model_stats(exp, params, features, *, num_images, num_steps, cfg_scale, seed=0,
                  progress=True):
    leaf = np.asarray(params["LabelEmbedder_0"]["Embed_0"]["embedding"])
    calls.append(dict(num_images=num_images, num_steps=num_steps, cfg_scale=cfg_scale,
                      leaf=leaf))
    return np.full(4, num_steps / 100.0), np.eye(4)

  monkeypatch.setattr(fid_evaluator, "model_stats", model_stats)
  monkeypatch.setattr(fid_evaluator, "load_features",
                      lambda path, **kwargs: (None, path or "inception.npz"))
  monkeypatch.setattr(fid_evaluator, "load_reference", lambda path, features=None: (
      np.zeros(4), np.eye(4)))
  return calls


def embedding(tree):
  return np.asarray(tree["LabelEmbedder_0"]["Embed_0"]["embedding"])


def test_fid_of_an_imported_checkpoint_follows_the_original_protocol(imported, sampled, capsys):
  with open(os.path.join(imported["workdir"], "config.json")) as f:
    saved = json.load(f)
  assert saved["evals"]["fid"]["protocol"] == "original"
  assert saved["guidance_convention"] == "original"
  # eval.py --mode=fid --fid_stats=S: every other flag left out.
  out = evaluation.run("fid", imported["workdir"], fid_stats=imported["stats"])
  assert [(c["num_steps"], c["cfg_scale"]) for c in sampled] == [
      (1, 1.0), (4, 1.0), (32, 1.0), (128, 1.0), (128, 1.5)]
  assert {c["num_images"] for c in sampled} == {4096}  # evals.fid.num_samples.
  for c in sampled:  # The online weights, as the original evaluates.
    np.testing.assert_array_equal(c["leaf"], embedding(imported["legacy"]["params"]))
  assert out["protocol"] == "original" and out["weights"] == "online"
  assert list(out["steps"]) == ["1", "4", "32", "128", "128_cfg1.5"]
  assert out["entries"][-1] == {"key": "128_cfg1.5", "steps": 128, "cfg_scale": 1.5}
  assert out["guidance_convention"] == "original" and out["cfg_scale"] == 1.5
  with open(os.path.join(imported["workdir"], "fid.json")) as f:
    assert json.load(f) == json.loads(json.dumps(out))
  printed = capsys.readouterr().out
  assert "FID protocol 'original' (the original's helper_eval.py do_fid_calc)" in printed
  assert "online weights" in printed

  # Flags still win: --protocol=guided --steps=2 --num_samples=8 --use_ema.
  del sampled[:]
  out = evaluation.run("fid", imported["workdir"], fid_stats=imported["stats"],
                       protocol="guided", steps=[2], num_samples=8, use_ema=True)
  assert [(c["num_steps"], c["cfg_scale"], c["num_images"]) for c in sampled] == [(2, 1.5, 8)]
  np.testing.assert_array_equal(sampled[0]["leaf"], embedding(imported["legacy"]["params_ema"]))
  assert out["weights"] == "ema" and list(out["steps"]) == ["2"]


def test_fid_reads_evals_fid_of_the_workdir_config(imported, sampled, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(imported["workdir"], workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    raw = json.load(f)
  raw["evals"]["fid"].update(steps=[2, 8], cfg_scale=3.0, num_samples=10, protocol="guided",
                             use_ema=None)
  with open(path, "w") as f:
    json.dump(raw, f)
  out = evaluation.run("fid", workdir, fid_stats=imported["stats"])
  assert [(c["num_steps"], c["cfg_scale"], c["num_images"]) for c in sampled] == [
      (2, 3.0, 10), (8, 3.0, 10)]
  assert out["protocol"] == "guided" and out["weights"] == "ema"


def test_an_old_workdir_evaluates_as_it_did(imported, sampled, tmp_path, caplog, monkeypatch):
  # config.json as written before guidance_convention and evals.fid.protocol existed.
  workdir = str(tmp_path / "old")
  shutil.copytree(imported["workdir"], workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    raw = json.load(f)
  del raw["guidance_convention"]
  del raw["evals"]["fid"]["protocol"]
  raw["evals"]["fid"]["use_ema"] = True
  with open(path, "w") as f:
    json.dump(raw, f)
  with caplog.at_level(logging.WARNING):
    config = experiment.load_config(workdir)
  notices = [r.getMessage() for r in caplog.records if "predates guidance_convention" in
             r.getMessage()]
  assert len(notices) == 1 and "\n" not in notices[0]
  assert config.guidance_convention == "legacy" and config.evals.fid.protocol == "guided"

  # --mode=fid: eval.py's old defaults (steps 1, 4, 128; 1,000 samples; EMA;
  # evals.samples.cfg_scale at every budget), not evals.fid.
  out = evaluation.run("fid", workdir, fid_stats=imported["stats"])
  assert [(c["num_steps"], c["cfg_scale"], c["num_images"]) for c in sampled] == [
      (1, 1.5, 1000), (4, 1.5, 1000), (128, 1.5, 1000)]
  np.testing.assert_array_equal(sampled[0]["leaf"], embedding(imported["legacy"]["params_ema"]))
  assert out["guidance_convention"] == "legacy" and out["weights"] == "ema"

  # --cfg_scale=0 there meant conditional without guidance; in a new workdir, unconditional.
  seen = []
  monkeypatch.setattr(evaluation, "sample", lambda exp, params, w, steps, n, cfg_scale, *a:
                      seen.append(cfg_scale))
  for where in (workdir, imported["workdir"]):
    for w in (0.0, None, 1.0):
      evaluation.run("sample", where, steps=[1], num_samples=2, cfg_scale=w)
  assert seen == [None, 1.5, 1.0, 0.0, 1.5, 1.0]


def test_in_training_evaluator_follows_the_protocol(imported, sampled):
  config = experiment.load_config(imported["workdir"])
  for section in config.evals.values():
    section.every = 0
  config.evals.fid.update(every=2, steps=(1, 2), stats_path=imported["stats"],
                          inception_path="inception.npz")
  exp, state, _ = experiment.restore_experiment(imported["workdir"], config=config)
  from shortcut_jax.evaluators import registry
  [ev] = [e for e in registry.build_evaluators(exp, imported["workdir"])
          if isinstance(e, fid_evaluator.FIDEvaluator)]
  metrics = ev.run(experiment.evaluator_state(state), 4)
  assert list(metrics) == ["fid/steps_1", "fid/steps_2", "fid/steps_128_cfg1.5"]
  assert [(c["num_steps"], c["cfg_scale"]) for c in sampled] == [(1, 1.0), (2, 1.0), (128, 1.5)]
  for c in sampled:
    np.testing.assert_array_equal(c["leaf"], embedding(imported["legacy"]["params"]))
