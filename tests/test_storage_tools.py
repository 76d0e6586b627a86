"""The data tools and weight loaders on gs:// paths, against a real GCS API server (`gcs`).

Nothing may reach TensorFlow's own GCS client or a local `gs:` folder: imported workdirs,
TFDS data_dirs, latents folders, image folders and weight files are read and written through
`shortcut_jax.storage` only (TFDS itself gets local cached copies).
"""

import io
import json
import os
import pathlib
import subprocess
import sys

import flax
from flax import traverse_util
import ml_collections
import numpy as np
from PIL import Image
import pytest

from shortcut_jax import latents as latents_lib
from shortcut_jax import storage
from shortcut_jax import text_encoders
from shortcut_jax import experiment
from shortcut_jax.data import catalog
from shortcut_jax.data import image_folder
from shortcut_jax.data import latent_dataset as ld
from shortcut_jax.data import pipeline
from shortcut_jax.data import prepare as prepare_lib
from shortcut_jax.data.builders import digits
from shortcut_jax.models import inception
from shortcut_jax.models import vae as vae_lib
from shortcut_jax.models import vae_weights
from shortcut_jax.tools import compare_digits
from shortcut_jax.tools import embed_text
from shortcut_jax.tools import encode_dataset as enc

from digits_configs import smoke_config

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("gcs", "no_local_gs_folder")


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """This test's own local cache of remote folders (a fresh machine's), not the shared one."""
  monkeypatch.setattr(storage, "_cache_root", lambda: str(tmp_path / "cache"))
  return tmp_path / "cache"


def _objects(gcs, prefix):
  root = pathlib.Path(gcs.bucket_dir()) / prefix
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_import_original_writes_a_restorable_workdir_to_the_bucket(gcs, original_fixture_dir):
  """The command line reads the original pickle from the bucket and writes the workdir there."""
  fixture = pathlib.Path(original_fixture_dir)
  storage.write_bytes("gs://bucket/original/ckpt.pkl",
                      (fixture / "original_dit_small.pkl").read_bytes())
  meta = json.loads((fixture / "original_dit_small_meta.json").read_text())
  a = meta["dit_args"]
  flags = {"model.patch_size": a["patch_size"], "model.hidden_size": a["hidden_size"],
           "model.depth": a["depth"], "model.num_heads": a["num_heads"],
           "model.mlp_ratio": a["mlp_ratio"], "model.dtype": "float32",
           "data.image_size": meta["input_shape"][0], "data.num_classes": a["num_classes"],
           "objective.denoise_timesteps": 128,
           "objective.class_dropout_prob": a["class_dropout_prob"]}
  result = subprocess.run(
      [sys.executable, "-m", "shortcut_jax.tools.import_original",
       "--checkpoint=gs://bucket/original/ckpt.pkl", "--workdir=gs://bucket/imported",
       "--config=configs/digits_shortcut.py:smoke",
       *[f"--config.{k}={v}" for k, v in flags.items()]],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"imported step {meta['step']}" in result.stdout
  written = _objects(gcs, "imported")
  assert "config.json" in written
  assert any(p.startswith(f"checkpoints/{meta['step']}/") for p in written), written

  exp, state, step = experiment.restore_experiment("gs://bucket/imported")
  assert step == meta["step"] and int(state.step) == meta["step"]
  with np.load(fixture / "original_dit_small_io.npz") as io_arrays:
    out = exp.module.apply({"params": state.ema_params}, io_arrays["x"], io_arrays["t"],
                           io_arrays["dt_base"], io_arrays["y"])
    np.testing.assert_allclose(np.asarray(out), io_arrays["out_f32_params_ema"], atol=2e-5)


def test_encode_dataset_to_the_bucket_from_a_remote_data_dir(gcs, cache, tmp_path, monkeypatch,
                                                             fast_compile):
  """digits built into gs:// (via a local cache), encoded into gs://, read back, resumed."""
  out = "gs://bucket/tools/latents"
  c = smoke_config("gs://bucket/tools/tfds", data__latents="precomputed",
                   vae__random_init=True, data__latents_dir=out)
  meta = enc.encode_dataset(c, splits=["test"], batch_size=64, shard_size=64, progress=False)
  assert meta["status"] == "complete" and meta["splits"]["test"]["num_shards"] == 3
  tfds_files = _objects(gcs, "tools/tfds/digits/1.0.0")
  assert {"dataset_info.json", "features.json"} <= set(tfds_files)
  assert any(n.startswith("digits-train.tfrecord") for n in tfds_files)
  shards = [ld.shard_name("test", i, 3) for i in range(3)]
  assert _objects(gcs, "tools/latents") == sorted(
      ["dataset_info.json", "encode_metadata.json", "features.json", *shards])
  bucket = pathlib.Path(gcs.bucket_dir()) / "tools/latents"
  for f in meta["splits"]["test"]["files"]:
    assert f["num_bytes"] == os.path.getsize(bucket / f["name"])

  # The pipeline reads the latents back: the VAE posterior of the pixel pipeline's images.
  batch = next(pipeline.make_dataset(c.data, split="test", global_batch_size=179, seed=0,
                                     train=False, process_index=0, process_count=1))
  pixels = next(pipeline.make_dataset(latents_lib.pixel_data_config(c.data), split="test",
                                      global_batch_size=179, seed=0, train=False,
                                      process_index=0, process_count=1))
  mean, _ = latents_lib.vae_from_config(c).posterior(np.repeat(pixels["image"], 3, axis=-1))
  np.testing.assert_allclose(batch["latent_mean"], np.asarray(mean), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["label"], pixels["label"])

  # Another machine (an empty cache) downloads the built dataset instead of building it.
  monkeypatch.setattr(storage, "_cache_root", lambda: str(tmp_path / "other_cache"))
  monkeypatch.setattr(digits.Digits, "_split_generators",
                      lambda *a: pytest.fail("the bucket's digits were built again"))
  assert catalog.get_builder(latents_lib.pixel_data_config(c.data)).info.splits[
      "test"].num_examples == 179

  # A lost shard is re-encoded, alone, and uploaded again.
  storage.remove(storage.join(out, shards[1]))
  again = enc.encode_dataset(c, splits=["test"], batch_size=64, shard_size=64, progress=False)
  assert again["last_run"]["encoded"] == 64 and again["status"] == "complete"
  assert _objects(gcs, "tools/latents") == sorted(
      ["dataset_info.json", "encode_metadata.json", "features.json", *shards])
  ld.verify(out)


def test_image_folder_and_its_embeddings_from_the_bucket(gcs, cache, tmp_path):
  """A remote `data.folder` with class sub-folders and a remote `data.embeddings` file."""
  rng = np.random.default_rng(0)
  rels = [f"{cls}/{i}.png" for cls in ("cat", "dog") for i in range(3)]
  for rel in rels:
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(png, "PNG")
    storage.write_bytes(f"gs://bucket/images/{rel}", png.getvalue())
  emb = np.arange(len(rels) * 3, dtype=np.float32).reshape(len(rels), 3)
  data = io.BytesIO()
  np.savez(data, paths=np.asarray(rels), embedding=emb)
  storage.write_bytes("gs://bucket/images_emb.npz", data.getvalue())

  builder = image_folder.make_builder("gs://bucket/images", 8, str(tmp_path / "tfds"),
                                      embeddings="gs://bucket/images_emb.npz")
  assert builder.builder_config.class_names == ("cat", "dog")
  builder.download_and_prepare()
  examples = list(builder.as_dataset(split="train").as_numpy_iterator())
  assert len(examples) == len(rels)  # Fewer than 10 per class: all in 'train'.
  by_label = sorted((int(e["label"]), tuple(e["embedding"])) for e in examples)
  assert by_label == sorted((rels.index(r) // 3, tuple(emb[rels.index(r)])) for r in rels)
  assert all(e["image"].shape == (8, 8, 3) for e in examples)


def test_manual_dataset_prepared_from_and_into_the_bucket(gcs, cache, monkeypatch):
  """`prepare --manual_dir gs://... --data_dir gs://...`: read from, built into the bucket;
  a run on another machine then finds it prepared there."""
  for i in range(3):
    png = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(png, "PNG")
    storage.write_bytes(f"gs://bucket/celeba/{i:05d}.png", png.getvalue())
  prepare_lib.prepare("celebahq256", manual_dir="gs://bucket/celeba",
                      data_dir="gs://bucket/tools/tfds_manual")
  assert {"dataset_info.json", "features.json"} <= set(
      _objects(gcs, "tools/tfds_manual/celebahq256/1.0.0"))
  monkeypatch.setattr(storage, "_cache_root", lambda: str(cache) + "_other_machine")
  cfg = ml_collections.ConfigDict(dict(name="celebahq256", image_size=256, num_classes=1,
                                       data_dir="gs://bucket/tools/tfds_manual"))
  info = pipeline.dataset_info(cfg)
  assert info["prepared"] and info["num_examples"] == {"train": 2, "test": 1}
  batch = next(pipeline.make_dataset(cfg, split="test", global_batch_size=1, seed=0,
                                     train=False, process_index=0, process_count=1))
  np.testing.assert_allclose(batch["image"], 120 / 127.5 - 1, atol=1e-6)  # 00002.png


def test_text_and_weight_loaders_read_remote_files(gcs, tmp_path):
  """Captions, prompt embeddings, metrics, VAE weights and Inception weights in the bucket."""
  storage.write_text("gs://bucket/w/captions.tsv", "a/1.png\ta red cat\n\nthe sea\n")
  assert embed_text.read_captions("gs://bucket/w/captions.tsv") == (
      ["a/1.png", "1"], ["a red cat", "the sea"])
  embed_text.write_embeddings("gs://bucket/w/emb.npz", ["x.png"] * 2, ["a", "b"],
                              np.ones((2, 5), np.float32))
  assert text_encoders.load_embeddings_file("gs://bucket/w/emb.npz", 5).shape == (2, 5)
  with pytest.raises(FileNotFoundError, match="gs://bucket/w/missing.npz"):
    text_encoders.load_embeddings_file("gs://bucket/w/missing.npz", 5)

  # compare_digits: remote workdirs in, remote table and plot out.
  for seed, fd in ((None, 9.0), (1, 11.0)):
    name = "digits_metrics.json" if seed is None else f"digits_metrics_seed{seed}.json"
    storage.write_json(f"gs://bucket/w/run/{name}",
                       {"steps": {"1": {"fd_digits": fd, "accuracy": 0.9}}})
  result = compare_digits.collect("gs://bucket/w/run")
  assert result["steps"][1]["fd"] == [9.0, 11.0]
  compare_digits.plot({"run": result}, "gs://bucket/w/plot.png")
  assert Image.open(io.BytesIO(storage.read_bytes("gs://bucket/w/plot.png"))).size[0] > 300

  # A VAE folder in the bucket (safetensors in its vae/ sub-folder) loads like a local one.
  config = vae_lib.VAEConfig.from_dict(vae_lib.TINY_VAE_CONFIG)
  rng = np.random.default_rng(0)
  # pylint: disable=protected-access
  state = {vae_weights._path_to_torch_key(path): rng.normal(
      size=vae_weights._torch_layout(path, shape)).astype(np.float32)
           for path, shape in vae_weights.expected_shapes(config).items()}
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  for folder in ("gs://bucket/w/vae_repo/vae", str(tmp_path / "vae_repo" / "vae")):
    storage.write_bytes(storage.join(folder, vae_weights.SAFETENSORS_FILE), save(state))
    storage.write_json(storage.join(folder, vae_weights.CONFIG_FILE), config.to_dict())
  remote_config, remote = vae_weights.load_vae_params("gs://bucket/w/vae_repo")
  local_config, local = vae_weights.load_vae_params(str(tmp_path / "vae_repo"))
  assert remote_config == local_config == config
  flat = lambda tree: traverse_util.flatten_dict(flax.core.unfreeze(tree))
  assert flat(remote).keys() == flat(local).keys()
  for key, value in flat(local).items():
    np.testing.assert_array_equal(np.asarray(flat(remote)[key]), np.asarray(value))
  with pytest.raises(vae_weights.VAEWeightsNotFoundError, match="gs://bucket/w/no_vae"):
    vae_weights.load_vae_params("gs://bucket/w/no_vae")

  # Inception: a remote file is read (here, one that is not an Inception file), a missing one
  # is named with where to get the weights.
  data = io.BytesIO()
  np.savez(data, something=np.zeros(3))
  storage.write_bytes("gs://bucket/w/inception.npz", data.getvalue())
  with pytest.raises(ValueError, match="gs://bucket/w/inception.npz is an .npz but not"):
    inception.load_inception_variables("gs://bucket/w/inception.npz")
  with pytest.raises(FileNotFoundError, match="gs://bucket/w/none.npz.*convert_inception"):
    inception.load_inception_variables("gs://bucket/w/none.npz")
