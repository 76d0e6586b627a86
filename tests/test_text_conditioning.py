"""Text (vector) conditioning: the `embedding` kind (null, dropout, CFG), the DiT's add / tokens
modes and learned null, image_folder datasets carrying embeddings, `tools.embed_text` with a
tiny random CLIP text model (skipped without torch / transformers), and a smoke run that trains
on embeddings and samples from held-out ones."""

import importlib
import os

import ml_collections
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from PIL import Image

from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax.data import pipeline
from shortcut_jax.models import dit as dit_lib

DIM = 6


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def _conditioning():
  return cond_lib.Conditioning((cond_lib.LabelKind(3), cond_lib.EmbeddingKind(DIM)))


def test_embedding_kind_null_dropout_and_guidance():
  c = _conditioning()
  emb = jnp.asarray(np.random.default_rng(0).normal(size=(4000, DIM)) + 3.0, jnp.float32)
  cond = {"label": jnp.zeros((4000,), jnp.int32), "embedding": emb}
  dropped, metrics = c.drop(cond, jax.random.PRNGKey(0),
                            {"class_dropout_prob": 0.0, "embedding_dropout_prob": 0.3})
  rate = float(metrics["dropped_ratio_embedding"])
  assert abs(rate - 0.3) < 0.03 and float(metrics["dropped_ratio_label"]) == 0.0
  nulled = np.all(np.asarray(dropped["embedding"]) == 0, axis=1)
  np.testing.assert_array_equal(np.asarray(dropped["embedding"])[~nulled], np.asarray(emb)[~nulled])
  assert np.all(np.asarray(c.null(cond)["embedding"]) == 0)
  # cfg_scale 0 nulls labels (the original's unconditional training) but keeps the text.
  kept = c.unguided(cond, {"cfg_scale": 0.0})
  np.testing.assert_array_equal(kept["embedding"], emb)
  assert np.all(np.asarray(kept["label"]) == 3)
  assert np.all(np.asarray(c.fill_missing({}, 2)["embedding"]) == 0)


def _dit(mode, null="zero"):
  module = dit_lib.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
                       out_channels=1, class_dropout_prob=0.0, num_classes=3,
                       dtype=jnp.float32, embedding_mode=mode, embedding_null=null)
  spec = {"image": (4, 4, 1), "embedding": (DIM,)}
  args, kwargs = dit_lib.init_inputs(module, spec, batch=2)
  params = module.init({"params": jax.random.PRNGKey(0)}, *args, **kwargs)["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape)
                                     for k, l in zip(keys, leaves)])
  return dit_lib.velocity_model(module, _conditioning()), params


@pytest.mark.parametrize("mode", ["add", "tokens"])
def test_dit_output_follows_the_embedding(mode):
  model, params = _dit(mode)
  assert "EmbeddingProj_0" in params
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
  t, lv = jnp.asarray([0.3, 0.6]), jnp.zeros((2,), jnp.int32)
  e1 = jnp.asarray(rng.normal(size=(2, DIM)), jnp.float32)
  out1 = model(params, x, t, lv, {"embedding": e1})
  out2 = model(params, x, t, lv, {"embedding": e1 + 1.0})
  assert float(jnp.max(jnp.abs(out1 - out2))) > 1e-3
  # Per-row: changing row 1's embedding leaves row 0's output alone.
  out3 = model(params, x, t, lv, {"embedding": e1.at[1].add(1.0)})
  np.testing.assert_allclose(out3[0], out1[0], rtol=1e-5, atol=1e-6)
  # A missing embedding is the null (zero) one.
  np.testing.assert_allclose(model(params, x, t, lv, {}),
                             model(params, x, t, lv, {"embedding": jnp.zeros((2, DIM))}),
                             rtol=1e-6)


def test_learned_null_replaces_zero_rows():
  model, params = _dit("add", null="learned")
  null = params["EmbeddingNull_0"]
  x = jnp.ones((2, 4, 4, 1))
  t, lv = jnp.asarray([0.3, 0.6]), jnp.zeros((2,), jnp.int32)
  zero = model(params, x, t, lv, {"embedding": jnp.zeros((2, DIM))})
  explicit = model(params, x, t, lv, {"embedding": jnp.broadcast_to(null, (2, DIM))})
  np.testing.assert_allclose(zero, explicit, rtol=1e-5, atol=1e-6)
  other = {**params, "EmbeddingNull_0": null + 1.0}
  assert float(jnp.max(jnp.abs(model(other, x, t, lv, {"embedding": jnp.zeros((2, DIM))})
                               - zero))) > 1e-4


def test_unconditioned_dit_has_no_embedding_parameters():
  module = dit_lib.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
                       out_channels=1, class_dropout_prob=0.0, num_classes=3, dtype=jnp.float32)
  params = dit_lib.init_params(module, jax.random.PRNGKey(0), (4, 4, 1))
  assert not any(k.startswith("Embedding") for k in params)
  with pytest.raises(ValueError, match="embedding"):
    module.apply({"params": params}, jnp.zeros((1, 4, 4, 1)), jnp.zeros(1), jnp.zeros(1),
                 jnp.zeros(1, jnp.int32), embedding=jnp.zeros((1, DIM)))


def _captioned_folder(root, n=12):
  """n flat-grey 8x8 images; image i has grey level 12 i and embedding [i, i, ...]."""
  os.makedirs(root)
  paths = []
  for i in range(n):
    Image.fromarray(np.full((8, 8, 3), 12 * i, np.uint8)).save(os.path.join(root, f"{i:02d}.png"))
    paths.append(f"{i:02d}.png")
  emb = np.repeat(np.arange(n, dtype=np.float32)[:, None], DIM, axis=1)
  np.savez(os.path.join(os.path.dirname(root), "emb.npz"), paths=np.asarray(paths), embedding=emb)
  return os.path.join(os.path.dirname(root), "emb.npz")


def _data_config(tmp_path, embeddings, dim=DIM):
  return ml_collections.ConfigDict(dict(
      name="image_folder", image_size=8, num_classes=1, data_dir=str(tmp_path / "tfds"),
      folder=str(tmp_path / "imgs"), embeddings=embeddings, embedding_dim=dim))


def test_image_folder_batches_carry_each_images_embedding(tmp_path):
  emb_path = _captioned_folder(str(tmp_path / "imgs"))
  cfg = _data_config(tmp_path, emb_path)
  batch = next(pipeline.make_dataset(cfg, split="train", global_batch_size=8, seed=0,
                                     process_index=0, process_count=1))
  assert batch["embedding"].shape == (8, DIM) and batch["embedding"].dtype == np.float32
  level = np.round((batch["image"][:, 0, 0, 0] + 1) * 127.5 / 12)
  np.testing.assert_allclose(batch["embedding"][:, 0], level)
  with pytest.raises(ValueError, match="embedding_dim"):
    pipeline.make_dataset(_data_config(tmp_path, emb_path, dim=4), split="train",
                          global_batch_size=8, seed=0)
  np.savez(str(tmp_path / "partial.npz"), paths=np.asarray(["00.png"]),
           embedding=np.zeros((1, DIM), np.float32))
  with pytest.raises(ValueError, match="no embedding for"):
    next(pipeline.make_dataset(_data_config(tmp_path, str(tmp_path / "partial.npz")),
                               split="train", global_batch_size=8, seed=0))
  with pytest.raises(FileNotFoundError, match="embed_text"):
    pipeline.make_dataset(_data_config(tmp_path, str(tmp_path / "none.npz")), split="train",
                          global_batch_size=8, seed=0)


def test_embed_text_needs_a_model_folder(tmp_path):
  from shortcut_jax.tools import embed_text
  with pytest.raises(ValueError, match="huggingface-cli download"):
    embed_text.load_text_model(None)
  with pytest.raises(FileNotFoundError, match="--model"):
    embed_text.load_text_model(str(tmp_path / "missing"))
  f = tmp_path / "c.tsv"
  f.write_text("a/1.png\ta red cat\n\nb/2.png\tthe sea\n", encoding="utf-8")
  assert embed_text.read_captions(str(f)) == (["a/1.png", "b/2.png"], ["a red cat", "the sea"])
  g = tmp_path / "plain.txt"
  g.write_text("one\ntwo\n", encoding="utf-8")
  assert embed_text.read_captions(str(g)) == (["0", "1"], ["one", "two"])


def _tiny_clip(folder):
  """A tiny random CLIP text model with projection and a character-level tokenizer."""
  import json
  import transformers
  letters = "abcdefghijklmnopqrstuvwxyz"
  vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
  for ch in letters:
    vocab[ch] = len(vocab)
    vocab[ch + "</w>"] = len(vocab)
  os.makedirs(folder)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  tokenizer = transformers.CLIPTokenizer(os.path.join(folder, "vocab.json"),
                                         os.path.join(folder, "merges.txt"))
  tokenizer.save_pretrained(folder)
  config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=16,
                                       intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=16,
                                       projection_dim=8, bos_token_id=0, eos_token_id=1,
                                       pad_token_id=1)
  config.architectures = ["CLIPTextModelWithProjection"]
  transformers.CLIPTextModelWithProjection(config).save_pretrained(folder)


@pytest.mark.reference
def test_embed_text_with_a_tiny_random_clip(tmp_path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from shortcut_jax.tools import embed_text
  folder = str(tmp_path / "clip")
  _tiny_clip(folder)
  tokenizer, model, has_projection = embed_text.load_text_model(folder)
  assert has_projection
  captions = ["a cat", "the sea", "a cat", "dog"]
  emb = embed_text.embed(captions, tokenizer, model, has_projection, batch_size=3,
                         max_length=16, progress=False)
  assert emb.shape == (4, 8) and emb.dtype == np.float32
  np.testing.assert_allclose(emb[0], emb[2], rtol=1e-5)  # same caption, across batches
  assert np.max(np.abs(emb[0] - emb[1])) > 1e-4
  with torch.no_grad():
    tok = tokenizer(["the sea"], padding="max_length", max_length=16, return_tensors="pt")
    direct = model(**tok).text_embeds.numpy()
  np.testing.assert_allclose(emb[1], direct[0], rtol=1e-5, atol=1e-6)
  out = str(tmp_path / "e.npz")
  embed_text.write_embeddings(out, ["x.png"] * 4, captions, emb)
  with np.load(out) as f:
    np.testing.assert_array_equal(f["embedding"], emb)
    assert list(f["paths"]) == ["x.png"] * 4


@pytest.mark.slow
def test_smoke_run_on_embeddings_trains_and_samples(tmp_path):
  import digits_configs
  import run_checks
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  emb_path = _captioned_folder(str(tmp_path / "imgs"), n=20)
  c = digits_configs.digits_config("smoke")
  c.data.update(name="image_folder", image_size=8, num_classes=1, folder=str(tmp_path / "imgs"),
                embeddings=emb_path, embedding_dim=DIM, data_dir=str(tmp_path / "tfds"))
  c.model.update(embedding_mode="tokens", embedding_null="learned")
  c.checkpoint.async_save = False
  for name in c.evals:
    c.evals[name].every = 0
  c.max_steps = 2
  c.batch_size = 8
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(metrics["train/loss"]) and "train/dropped_ratio_embedding" in metrics
  exp, state, _ = experiment.restore_experiment(str(tmp_path / "run"))
  assert "EmbeddingNull_0" in state.params and exp.batch_spec["embedding"] == (DIM,)
  run_checks.assert_samples(tmp_path / "run", (8, 8, 3), steps=(1,))


# --- prompts: the digit-word demo and CLIP ---------------------------------------------------


def test_digit_word_vectors_and_prompt_classes():
  from shortcut_jax import text_encoders as te
  v = te.digit_word_vectors(16)
  assert v.shape == (10, 16) and v.dtype == np.float32
  np.testing.assert_array_equal(v, te.digit_word_vectors(16))  # Fixed: part of the data.
  assert np.min(np.linalg.norm(v[:, None] - v[None], axis=-1) + 1e9 * np.eye(10)) > 2.0
  assert list(te.digit_word_classes(["three", "A Seven.", "the digit zero"])) == [3, 7, 0]
  for bad in ("cat", "one two"):
    with pytest.raises(ValueError, match="exactly one of"):
      te.digit_word_classes([bad])
  data = ml_collections.ConfigDict(dict(embeddings="digit_words", embedding_dim=16))
  np.testing.assert_array_equal(te.encode_prompts(data, ["nine", "two"]), v[[9, 2]])
  # Without prompts the demo samples every class in turn, and scores each against its word.
  prompts = te.default_prompts(data, 12)
  assert prompts[:2] == ["zero", "one"] and prompts[10] == "zero"
  np.testing.assert_array_equal(te.prompt_classes(data, prompts), np.arange(12) % 10)
  clip = ml_collections.ConfigDict(dict(embeddings="e.npz", embedding_dim=16))
  assert te.default_prompts(clip, 4) is None and te.prompt_classes(clip, ["a cat"]) is None
  with pytest.raises(ValueError, match="text_model"):
    te.encode_prompts(ml_collections.ConfigDict(dict(embeddings="e.npz", embedding_dim=16,
                                                     text_model=None)), ["a cat"])
  with pytest.raises(ValueError, match="without embeddings"):
    te.encode_prompts(ml_collections.ConfigDict(dict(embedding_dim=0)), ["nine"])


def test_digits_batches_carry_their_class_words_vector_plus_noise(tmp_path):
  from shortcut_jax import text_encoders as te
  data = ml_collections.ConfigDict(dict(
      name="digits", image_size=16, num_classes=10, data_dir=str(tmp_path / "tfds"),
      embedding_dim=32, embeddings="digit_words", embedding_noise=0.5))
  kw = dict(split="train", global_batch_size=64, seed=1, process_index=0, process_count=1)
  batch = next(pipeline.make_dataset(data, **kw))
  noise = batch["embedding"] - te.digit_word_vectors(32)[batch["label"]]
  assert 0.45 < noise.std() < 0.55 and abs(noise.mean()) < 0.05
  np.testing.assert_array_equal(batch["embedding"], next(pipeline.make_dataset(data, **kw))[
      "embedding"])  # Fixed per example and seed (exact resumption).
  exact = next(pipeline.make_dataset(ml_collections.ConfigDict(dict(data, embedding_noise=0.0)),
                                     **kw))
  np.testing.assert_array_equal(exact["embedding"], te.digit_word_vectors(32)[exact["label"]])
  import digits_configs
  from shortcut_jax import config as config_lib
  for bad, what in ((dict(embedding_dim=0), "0"), (dict(name="photos"), "'photos'")):
    c = digits_configs.quick_run_config("digits_word_vectors", str(tmp_path / "tfds"), 2)
    c.data.update(bad)
    with pytest.raises(ValueError, match=f"digit_words.*got .*{what}"):
      config_lib.validate(c)


@pytest.mark.slow
def test_word_vector_demo_trains_scores_classes_and_follows_prompts(tmp_path):
  import digits_configs
  from shortcut_jax import evaluation
  from shortcut_jax.evaluators import conditions
  from shortcut_jax import text_encoders as te
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  work = str(tmp_path / "run")
  c = digits_configs.quick_run_config("digits_word_vectors", str(tmp_path / "tfds"), 2)
  trainer.train_and_evaluate(c, work)
  exp = experiment.build_experiment(c)
  assert exp.batch_spec["embedding"] == (32,) and not conditions.is_conditional(c)
  # Accuracy is scored against the prompted words (the labels are all null).
  metrics = evaluation.run("digits_metrics", work, steps=[1], num_samples=20, cfg_scale=1.5,
                           batch_size=20)
  assert 0.0 <= metrics["steps"]["1"]["accuracy"] <= 1.0

  def sample(name, **kw):
    out = evaluation.run("sample", work, steps=[1], num_samples=4, cfg_scale=1.5, batch_size=4,
                         **kw)
    with np.load(out[1]) as f:
      return {k: f[k] for k in f.files}, name

  (tmp_path / "a.txt").write_text("three\nseven\n")
  (tmp_path / "b.txt").write_text("three\nthree\n")
  a, _ = sample("a", prompts=str(tmp_path / "a.txt"))
  b, _ = sample("b", prompts=str(tmp_path / "b.txt"))
  assert list(a["prompt_index"]) == [0, 1, 0, 1] and list(a["prompts"]) == ["three", "seven"]
  np.testing.assert_array_equal(a["images"][0], b["images"][0])  # Same prompt, same noise.
  # Image i is conditioned on prompt i % 2's word vector (the model's output depends on the
  # vector: test_dit_output_follows_the_embedding); the label stays the null class.
  cond, _, _ = conditions.prompted_cond(exp, 4, str(tmp_path / "a.txt"), None)
  np.testing.assert_array_equal(cond["embedding"], te.digit_word_vectors(32)[[3, 7, 3, 7]])
  assert (cond["label"] == c.data.num_classes).all()
  np.save(tmp_path / "v.npy", te.digit_word_vectors(32)[[3, 7]])
  v, _ = sample("v", embeddings=str(tmp_path / "v.npy"))
  np.testing.assert_array_equal(v["images"], a["images"])
  with pytest.raises(ValueError, match="not both"):
    evaluation.run("sample", work, steps=[1], num_samples=2, cfg_scale=None,
                   prompts=str(tmp_path / "a.txt"), embeddings=str(tmp_path / "v.npy"))
  np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
  with pytest.raises(ValueError, match=r"\[N, 32\]"):
    evaluation.run("sample", work, steps=[1], num_samples=2, cfg_scale=None,
                   embeddings=str(tmp_path / "bad.npy"))


@pytest.mark.reference
def test_prompts_through_a_tiny_random_clip(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from shortcut_jax import text_encoders as te
  from shortcut_jax.tools import embed_text
  folder = str(tmp_path / "clip")
  _tiny_clip(folder)
  data = ml_collections.ConfigDict(dict(embeddings="e.npz", embedding_dim=8, text_model=folder))
  got = te.encode_prompts(data, ["a cat", "the sea"])
  direct = embed_text.embed(["a cat", "the sea"], *embed_text.load_text_model(folder),
                            max_length=16, progress=False)
  np.testing.assert_allclose(got, direct, rtol=1e-6)
  with pytest.raises(ValueError, match="size 8"):
    te.encode_prompts(ml_collections.ConfigDict(dict(data, embedding_dim=9)), ["a cat"])
