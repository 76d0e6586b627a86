"""Config files load, `:smoke` shrinks them, and every validation error names its field."""

import importlib
import pathlib

import pytest

from digits_configs import digits_config
from shortcut_jax import config as config_lib

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_configs_load_and_validate(name, arg):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  config_lib.validate(c)
  assert c.is_locked
  module_doc = importlib.import_module(f"configs.{name}").__doc__
  assert "python train.py --config=configs/" in module_doc  # each docstring gives its command
  if arg == "smoke":
    assert c.max_steps <= 10 and c.model.depth == 1


def test_unknown_key_is_an_error():
  c = importlib.import_module("configs.digits_shortcut").get_config()
  with pytest.raises(AttributeError):
    c.optim.learning_rate = 1.0  # the field is optim.lr
  with pytest.raises(ValueError, match="unknown config argument"):
    importlib.import_module("configs.digits_shortcut").get_config("tiny")


@pytest.mark.parametrize("changes,field", [
    (dict(batch_size=100), "objective.bootstrap_every"),
    (dict(data__image_size=15), "model.patch_size"),
    (dict(model__hidden_size=130), "model.num_heads"),
    (dict(objective__denoise_timesteps=100), "objective.denoise_timesteps"),
    (dict(objective__name="diffusion"), "objective.name"),
    (dict(optim__lr=0.0), "optim.lr"),
    (dict(optim__lr=-1e-4), "optim.lr"),
    (dict(optim__schedule="linear"), "optim.schedule"),
    (dict(optim__ema_rate=1.0), "optim.ema_rate"),
    (dict(objective__bootstrap_dt_bias=2), "objective.bootstrap_dt_bias"),
    (dict(objective__target_ema_rate=1.0), "objective.target_ema_rate"),
    (dict(objective__target_ema_rate=-0.5), "objective.target_ema_rate"),
    (dict(objective__name="meanflow", objective__target_ema_rate=0.95),
     "objective.target_ema_rate is an option of objective 'shortcut'"),
    (dict(objective__wavelet_levels=-1), "objective.wavelet_levels"),
    (dict(objective__class_dropout_prob=1.5), "objective.class_dropout_prob"),
    (dict(data__name="mnist"), "data.name"),
    (dict(data__name="image_folder"), "data.folder"),
    (dict(data__name="div2k"), "data.low_res_factor"),
    (dict(model__dtype="float64"), "model.dtype"),
    (dict(model__dtype="float16"), "loss scaling"),
    (dict(model__matmul_precision="fastest"), "model.matmul_precision"),
    (dict(optim__accumulate_steps=3), "optim.accumulate_steps"),
    (dict(optim__accumulate_steps=0), "optim.accumulate_steps"),
    (dict(data__parallel_reads=0), "data.parallel_reads"),
    (dict(model__attention_impl="flash"), "model.attention_impl"),
    (dict(sharding="zero3"), "sharding"),
    (dict(mesh__fsdp=0), "mesh.fsdp"),
    (dict(checkpoint__every_steps=0), "checkpoint.every_steps"),
    (dict(max_steps=0), "max_steps"),
    (dict(evals__samples__steps=(1, 256)), "evals.samples.steps"),
    (dict(data__random_rot90=True, data__latents="precomputed", data__latents_dir="/x"),
     "data.random_rot90"),
])
def test_validation_names_the_field(changes, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_lib.validate(digits_config(**changes))


def test_batch_must_divide_device_count():
  c = digits_config(batch_size=24, objective__bootstrap_every=8)
  config_lib.validate(c, device_count=8)
  with pytest.raises(ValueError, match="device count"):
    config_lib.validate(c, device_count=16)


def test_microbatches_must_split_over_the_devices():
  c = digits_config(batch_size=32, optim__accumulate_steps=4)
  config_lib.validate(c, device_count=8)
  with pytest.raises(ValueError, match=r"accumulate_steps \(4\) must divide the 2 rows"):
    config_lib.validate(c, device_count=16)


def test_all_errors_reported_together():
  with pytest.raises(ValueError) as e:
    config_lib.validate(digits_config(optim__lr=0.0, model__dtype="int8"))
  assert "optim.lr" in str(e.value) and "model.dtype" in str(e.value)
