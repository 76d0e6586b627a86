"""Sharding: mesh sizes, the partitioning rules (DiT-B's expected table), and the real trainer on
faked CPU devices — dp / fsdp / hybrid on 8 devices and two `jax.distributed` processes against
one device, and checkpoints moved between meshes both ways.

Multi-device runs happen in subprocesses (`tests/sharding_worker.py`): the device count is fixed
when jax is imported, and this process has one device.

Tolerances. Losses: rtol 1e-5; weights after 3-4 AdamW steps: atol 5e-6 (float32; sharded
matmuls and the gradient sums over devices add in a different order). Measured (jax 0.10.2, CPU):
losses within 2.1e-7 relative, weights within 1.4e-7 absolute for dp, fsdp, hybrid, two
processes and the resumed run. A real sharding bug (a missing gradient reduction, a wrong
slice) moves weights by about the learning rate, 1e-3; one step moves them by > 5e-5 (checked).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import digits_configs
import sharding_worker
from shortcut_jax.parallel import sharding
from shortcut_jax.train import train_state as train_state_lib
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.models import dit

pytestmark = pytest.mark.processes  # Scheduled first (tests/conftest.py).

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-6
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharding_worker.py")
# hidden 128 makes the DiT's kernels big enough (>= 2**14 elements) to be sharded.
# Checkpoints only at the last step (saving costs ~1 s per step here).
BASE = {"model__hidden_size": 128, "log_every": 1, "checkpoint__every_steps": 100,
        "checkpoint__max_to_keep": 5, "max_steps": 3}


# ---------------------------------------------------------------------------------------------
# Mesh sizes and validation (no devices needed).

def test_mesh_shape_fills_and_checks():
  assert sharding.mesh_shape({"data": -1, "fsdp": 1}, 8) == (8, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4)
  assert sharding.mesh_shape({"data": 2, "fsdp": 4}, 8) == (2, 4)
  with pytest.raises(sharding.ShardingError, match=r"mesh.data \(2\) x mesh.fsdp \(2\) = 4"):
    sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)
  with pytest.raises(sharding.ShardingError, match=r"mesh.fsdp=3 does not divide the 8 devices"):
    sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
  with pytest.raises(sharding.ShardingError, match="only one of"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(sharding.ShardingError, match="mesh.fsdp must be"):
    sharding.mesh_shape({"data": 1, "fsdp": 0}, 8)


def test_batch_size_must_split_over_devices_and_processes():
  mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 4})
  sharding.validate("hybrid", mesh, 16, process_count=2)
  with pytest.raises(sharding.ShardingError, match=r"batch_size \(12\).*mesh.data x mesh.fsdp"):
    sharding.validate("fsdp", mesh, 12, process_count=1)
  with pytest.raises(sharding.ShardingError, match=r"batch_size \(8\).*process count \(16\)"):
    sharding.validate("dp", mesh, 8, process_count=16)
  with pytest.raises(sharding.ShardingError, match="sharding must be one of"):
    sharding.validate("zero3", mesh, 16, process_count=1)


def test_distributed_start_up_needs_a_complete_description(monkeypatch):
  from shortcut_jax.parallel import distributed
  assert distributed.launched_as_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"})
  assert not distributed.launched_as_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
  assert distributed.launched_as_cluster({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})
  assert not distributed.launched_as_cluster({"TPU_WORKER_HOSTNAMES": "w0"})
  with pytest.raises(ValueError, match="without the process count"):
    distributed.initialize(coordinator_address="127.0.0.1:1234", num_processes=2)
  # JAX's own coordinator variable is a coordinator like ours: the count is still required.
  assert not distributed.launched_as_cluster({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(ValueError, match="without the process count"):
    distributed.initialize()
  assert not jax.distributed.is_initialized()


def test_make_mesh_on_one_device():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
  with pytest.raises(sharding.ShardingError, match="must equal the device count"):
    sharding.make_mesh({"data": 1, "fsdp": 8})


# ---------------------------------------------------------------------------------------------
# Partitioning rules, from shapes only (jax.eval_shape: no DiT-B memory is allocated).

def _dit_shapes(preset, image_shape=(32, 32, 4), num_classes=1000):
  module = dit.DiT(**dit.DIT_PRESETS[preset], out_channels=image_shape[-1],
                   class_dropout_prob=0.1, num_classes=num_classes)
  x = jnp.zeros((1, *image_shape))
  return jax.eval_shape(lambda r: module.init({"params": r}, x, jnp.zeros((1,)), jnp.zeros((1,)),
                                              jnp.zeros((1,), jnp.int32))["params"],
                        jax.random.PRNGKey(0))


def _flat(tree):
  return {sharding.path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, P))}


def _dit_b_expected():
  """DiT-B/2 on 32x32x4 latents, 1000 classes, fsdp axis of 8: written from the rules' intent.

  Dense kernels [in, out] go on their larger dimension (the first when equal), except the adaLN
  modulation kernels (each block's and the final layer's `Dense_0`): their input; the embedding
  table on its hidden dimension (1001 rows do not divide by 8); biases, the 16-wide output
  layer, the 2x2x4 patch conv and the 256x1 time table are below 2**14 elements: replicated.
  """
  cols, first = P(None, "fsdp"), P("fsdp", None)
  table = {
      "Embed_0/embedding": ((256, 1), P()),
      "LabelEmbedder_0/Embed_0/embedding": ((1001, 768), cols),
      "PatchEmbed_0/Conv_0/kernel": ((2, 2, 4, 768), P()),
      "PatchEmbed_0/Conv_0/bias": ((768,), P()),
      "FinalLayer_0/Dense_0/kernel": ((768, 1536), first),
      "FinalLayer_0/Dense_0/bias": ((1536,), P()),
      "FinalLayer_0/Dense_1/kernel": ((768, 16), P()),
      "FinalLayer_0/Dense_1/bias": ((16,), P()),
  }
  for i in (0, 1):
    table[f"TimestepEmbedder_{i}/Dense_0/kernel"] = ((256, 768), cols)
    table[f"TimestepEmbedder_{i}/Dense_0/bias"] = ((768,), P())
    table[f"TimestepEmbedder_{i}/Dense_1/kernel"] = ((768, 768), first)
    table[f"TimestepEmbedder_{i}/Dense_1/bias"] = ((768,), P())
  for b in range(12):
    block = {
        "Dense_0/kernel": ((768, 4608), first),  # adaLN modulation: 6 x hidden outputs.
        "Dense_0/bias": ((4608,), P()),
        "MlpBlock_0/Dense_0/kernel": ((768, 3072), cols),
        "MlpBlock_0/Dense_0/bias": ((3072,), P()),
        "MlpBlock_0/Dense_1/kernel": ((3072, 768), first),
        "MlpBlock_0/Dense_1/bias": ((768,), P()),
    }
    for j in (1, 2, 3, 4):  # k, q, v and the output projection.
      block[f"Dense_{j}/kernel"] = ((768, 768), first)
      block[f"Dense_{j}/bias"] = ((768,), P())
    table.update({f"DiTBlock_{b}/{k}": v for k, v in block.items()})
  return table


def test_dit_b_fsdp_partition_specs():
  shapes = _dit_shapes("DiT-B/2")
  got = _flat(sharding.param_partition_specs(shapes, "fsdp", 8))
  expected = _dit_b_expected()
  assert sorted(got) == sorted(expected)
  flat_shapes = {sharding.path_name(p): tuple(l.shape)
                 for p, l in jax.tree_util.tree_leaves_with_path(shapes)}
  for name, (shape, spec) in expected.items():
    assert flat_shapes[name] == shape, name
    assert got[name] == spec, f"{name}: got {got[name]}, expected {spec}"
  # Hybrid uses the same rules; dp replicates everything.
  assert _flat(sharding.param_partition_specs(shapes, "hybrid", 8)) == got
  assert set(_flat(sharding.param_partition_specs(shapes, "dp", 8)).values()) == {P()}


def test_state_follows_params_and_fsdp_divides_memory():
  shapes = _dit_shapes("DiT-B/2")
  tx, _ = train_state_lib.make_optimizer(
      types.SimpleNamespace(lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_steps=0,
                            schedule="constant"), 10)
  state = jax.eval_shape(lambda p: train_state_lib.create_train_state(p, tx, jax.random.PRNGKey(0)),
                         shapes)
  specs = sharding.state_partition_specs(state, "fsdp", 8)
  params = _flat(specs.params)
  assert _flat(specs.ema_params) == params
  adam = specs.opt_state[0]
  assert adam.count == P() and _flat(adam.mu) == params and _flat(adam.nu) == params
  assert specs.step == P() and specs.rng == P()
  # Bytes per device: fsdp holds close to 1/8 of the state dp holds.
  nbytes = lambda spec_tree: sum(
      int(np.prod([s // (8 if a == "fsdp" else 1) for s, a in zip(l.shape, tuple(sp) + (None,) * 9)]))
      * l.dtype.itemsize for l, sp in zip(jax.tree.leaves(state), jax.tree.leaves(
          spec_tree, is_leaf=lambda x: isinstance(x, P))))
  dp = nbytes(sharding.state_partition_specs(state, "dp", 8))
  fsdp = nbytes(specs)
  assert 1 / 8 < fsdp / dp < 1.15 / 8, (fsdp, dp)


def test_unsatisfiable_rule_names_the_parameter():
  shapes = _dit_shapes("DiT-B/2")
  # 768 does not divide by 7: an explicit dimension fails, naming the first parameter it hits.
  with pytest.raises(sharding.ShardingError,
                     match=r"DiTBlock_0/Dense_1/kernel \(768, 768\).*dimension 0 \(size 768\)"):
    sharding.param_partition_specs(shapes, "fsdp", 7,
                                   rules=[(r"DiTBlock_\d+/Dense_1/kernel", 0)])
  # AUTO in a rule demands sharding too: neither 1001 nor 768 divides by 5.
  with pytest.raises(sharding.ShardingError,
                     match=r"LabelEmbedder_0/Embed_0/embedding \(1001, 768\).*no dimension"):
    sharding.param_partition_specs(shapes, "fsdp", 5,
                                   rules=[(r".*embedding", sharding.AUTO)], min_size=1000)
  # Paths no rule names fall back to the lenient default: replicated, no error.
  specs = _flat(sharding.param_partition_specs(shapes, "fsdp", 5, rules=[]))
  assert set(specs.values()) == {P()}
  with pytest.raises(sharding.ShardingError, match=r"FinalLayer_0/Dense_1/kernel .* 2 dimensions"):
    sharding.param_partition_specs(shapes, "fsdp", 8, rules=[(r"FinalLayer_0/Dense_1/kernel", 2)], min_size=0)


def test_min_size_and_rule_order():
  shapes = {"a": {"kernel": jax.ShapeDtypeStruct((64, 32), jnp.float32)},
            "b": {"kernel": jax.ShapeDtypeStruct((8, 4096), jnp.float32)}}
  # (64, 32) = 2048 elements: below the default minimum, replicated.
  got = _flat(sharding.param_partition_specs(shapes, "fsdp", 8, rules=[(r".*kernel", 0)]))
  assert got == {"a/kernel": P(), "b/kernel": P("fsdp", None)}
  got = _flat(sharding.param_partition_specs(
      shapes, "fsdp", 8, rules=[(r"a/.*", sharding.REPLICATED), (r".*", 1)], min_size=0))
  assert got == {"a/kernel": P(), "b/kernel": P(None, "fsdp")}


# ---------------------------------------------------------------------------------------------
# The real trainer on several devices and processes.

def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _spawn(tmp, name, devices, jobs, data_dir, distributed=None):
  spec = {"devices": devices, "data_dir": data_dir, "jobs": jobs, "optimize": False,
          "cache_dir": str(tmp / f"{name}_cache"), "results": str(tmp / f"{name}.json")}
  if distributed:
    spec["distributed"] = distributed
  path = tmp / f"{name}_{(distributed or {}).get('process_id', 0)}_spec.json"
  path.write_text(json.dumps(spec))
  log = open(tmp / f"{name}_{(distributed or {}).get('process_id', 0)}.log", "w")
  env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(WORKER))))
  env["XLA_FLAGS"] = sharding_worker.cpu_flags()
  return subprocess.Popen([sys.executable, WORKER, str(path)], stdout=log, stderr=subprocess.STDOUT,
                          env=env), tmp / f"{name}.json", log.name


def _wait(proc, results, log, timeout=600):
  if proc.wait(timeout=timeout) != 0:
    with open(log) as f:
      raise AssertionError(f"worker failed (rc {proc.returncode}):\n{f.read()[-6000:]}")
  return json.loads(results.read_text()) if results is not None else None


def _job(tmp, name, **config):
  return {"workdir": str(tmp / name), "config": dict(BASE, **config), "combine_processes": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Trains every variant once; the tests below compare them.

  Every run reads the global batches a 2-process run assembles (the concatenation of both
  processes' slices), so one single-device reference serves all comparisons. All runs compile
  with `jax_disable_most_optimizations` (compiling is most of their time).
  """
  tmp = tmp_path_factory.mktemp("sharding")
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp / "tfds")
  # Build the digits TFDS once, here, before the workers read it.
  from shortcut_jax.data import pipeline
  pipeline.dataset_info(digits_configs.smoke_config(data_dir).data)

  port = _free_port()
  # Evaluators on at the last step: they get a host copy of the state on every process.
  two = [_spawn(tmp, "two_proc", 4, [dict(_job(tmp, "two_proc", sharding="fsdp", mesh__data=1,
                                                mesh__fsdp=8, evals__samples__every=3,
                                                evals__samples__steps=[1],
                                                evals__validation__every=3),
                                           dump=str(tmp / "two_proc.npz"),
                                           combine_processes=None)],
                data_dir, {"port": port, "num_processes": 2, "process_id": i}) for i in (0, 1)]
  # One device, in this process: 4 steps, checkpoints at 2, 3 and 4.
  restore = sharding_worker._combine(2)
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    trainer.train_and_evaluate(digits_configs.smoke_config(
        data_dir, **dict(BASE, max_steps=4, checkpoint__every_steps=1)), str(tmp / "ref"))
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
    restore()
  # The 1-device run as if stopped at step 2, to be resumed on 8 devices.
  os.makedirs(tmp / "resume" / "checkpoints")
  shutil.copytree(tmp / "ref" / "checkpoints" / "2", tmp / "resume" / "checkpoints" / "2")
  shutil.copy(tmp / "ref" / "config.json", tmp / "resume" / "config.json")

  eight = _spawn(tmp, "eight", 8, [
      _job(tmp, "dp", sharding="dp"),
      dict(_job(tmp, "fsdp", sharding="fsdp", mesh__data=1, mesh__fsdp=8),
           dump=str(tmp / "fsdp.npz"), sample=True),
      _job(tmp, "hybrid", sharding="hybrid", mesh__data=2, mesh__fsdp=4),
      _job(tmp, "resume", sharding="fsdp", mesh__data=1, mesh__fsdp=8, max_steps=4),
  ], data_dir)
  out = {"eight": _wait(*eight)}
  out["two"] = _wait(*two[0])
  _wait(two[1][0], None, two[1][2])
  out["tmp"] = tmp
  return out


def _losses(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {l["step"]: l["train/loss"] for l in lines if "train/loss" in l}


def _restore(workdir, step=None):
  exp, state, restored = experiment.restore_experiment(str(workdir), step=step)
  # Restored onto this process's single device, whatever mesh wrote it.
  leaf = state.params["DiTBlock_0"]["Dense_0"]["kernel"]
  assert len(leaf.sharding.device_set) == 1
  return jax.device_get({"params": state.params, "ema": state.ema_params}), restored


def _assert_trees_close(a, b, atol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=atol), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("mode, mesh", [("dp", {"data": 8, "fsdp": 1}),
                                        ("fsdp", {"data": 1, "fsdp": 8}),
                                        ("hybrid", {"data": 2, "fsdp": 4})])
def test_eight_devices_match_one_device(runs, mode, mesh):
  tmp = runs["tmp"]
  job = runs["eight"]["jobs"][("dp", "fsdp", "hybrid").index(mode)]
  assert runs["eight"]["device_count"] == 8 and job["mesh"] == mesh and job["step"] == 3
  kernel = "DiTBlock_0/MlpBlock_0/Dense_0/kernel"  # [128, 512]
  if mode == "dp":
    assert set(job["param_specs"].values()) == {"P()"}
  else:
    assert job["param_specs"][kernel] == "P(None, 'fsdp')"
    assert job["mu_spec"] == job["ema_spec"] == "P(None, 'fsdp')"
    assert job["param_specs"]["DiTBlock_0/Dense_0/bias"] == "P()"
  ref, got = _losses(tmp / "ref"), _losses(tmp / mode)
  assert sorted(got) == [1, 2, 3]
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)],
                             rtol=LOSS_RTOL)
  want, _ = _restore(tmp / "ref", step=3)
  have, step = _restore(tmp / mode)
  assert step == 3
  _assert_trees_close(have, want, WEIGHT_ATOL)
  _assert_step_moved_weights(runs, want)


def _assert_step_moved_weights(runs, after_step_3):
  """The weight comparisons can fail: step 3 alone moves weights by far more than the tolerance."""
  before, _ = _restore(runs["tmp"] / "ref", step=2)
  kernel = lambda t: t["params"]["DiTBlock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert np.max(np.abs(kernel(after_step_3) - kernel(before))) > 10 * WEIGHT_ATOL


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
  tmp = runs["tmp"]
  two = runs["two"]
  assert two["process_count"] == 2 and two["device_count"] == 8
  job = two["jobs"][0]
  assert job["mesh"] == {"data": 1, "fsdp": 8} and job["step"] == 3
  assert job["param_specs"]["DiTBlock_0/MlpBlock_0/Dense_0/kernel"] == "P(None, 'fsdp')"
  lines = [json.loads(l) for l in open(tmp / "two_proc" / "metrics.jsonl")]
  assert [l["step"] for l in lines if "val/loss" in l] == [3]
  assert "grid_1steps.png" in os.listdir(tmp / "two_proc" / "samples" / "step_3")
  ref, got = _losses(tmp / "ref"), _losses(tmp / "two_proc")
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)],
                             rtol=LOSS_RTOL)
  want, _ = _restore(tmp / "ref", step=3)
  have, _ = _restore(tmp / "two_proc")
  _assert_trees_close(have, want, WEIGHT_ATOL)
  _assert_step_moved_weights(runs, want)
  # What the two processes held (gathered there) is what the checkpoint holds.
  with np.load(tmp / "two_proc.npz") as f:
    np.testing.assert_array_equal(
        f["params/DiTBlock_0/Dense_0/kernel"], have["params"]["DiTBlock_0"]["Dense_0"]["kernel"])


@pytest.mark.slow
def test_fsdp_checkpoint_restores_and_samples_on_one_device(runs):
  tmp = runs["tmp"]
  assert runs["eight"]["jobs"][1]["sample_finite"]  # Sampling with sharded weights, on 8.
  have, step = _restore(tmp / "fsdp")
  assert step == 3
  with np.load(tmp / "fsdp.npz") as f:
    for kind in ("params", "ema"):
      for path, leaf in jax.tree_util.tree_leaves_with_path(have[kind]):
        np.testing.assert_array_equal(leaf, f[f"{kind}/" + sharding.path_name(path)])
  from shortcut_jax import evaluation
  written = evaluation.run("sample", str(tmp / "fsdp"), steps=[2], num_samples=4, cfg_scale=1.5)
  with np.load(written[2]) as f:
    assert f["images"].shape == (4, 16, 16, 1) and f["images"].dtype == np.uint8


@pytest.mark.slow
def test_one_device_checkpoint_resumes_on_eight(runs):
  tmp = runs["tmp"]
  job = runs["eight"]["jobs"][3]
  assert job["step"] == 4 and job["mesh"] == {"data": 1, "fsdp": 8}
  assert job["param_specs"]["DiTBlock_0/MlpBlock_0/Dense_0/kernel"] == "P(None, 'fsdp')"
  ref, got = _losses(tmp / "ref"), _losses(tmp / "resume")
  assert sorted(got) == [3, 4]
  np.testing.assert_allclose([got[3], got[4]], [ref[3], ref[4]], rtol=LOSS_RTOL)
  want, _ = _restore(tmp / "ref", step=4)
  have, step = _restore(tmp / "resume")
  assert step == 4
  _assert_trees_close(have, want, WEIGHT_ATOL)
