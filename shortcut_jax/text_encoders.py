"""Prompts to embedding vectors: what `eval.py --mode=sample --prompts=FILE` conditions on.

Two text models, chosen by the run's data config:
  * `data.embeddings='digit_words'` (the embedded demo, no download): the ten digit words
    "zero" … "nine" each have a fixed random vector (`digit_word_vectors`); a prompt is the word
    it contains. The digits pipeline gives every training example its class word's vector plus
    Gaussian noise of standard deviation `data.embedding_noise`, so the model learns the class
    from the vector alone (its labels are all dropped: `objective.class_dropout_prob=1`).
  * otherwise `data.text_model`: a local CLIP text model folder (`tools.embed_text`, the model
    the dataset's embeddings were computed with: `load_text_model`, `embed`, the library side of
    `tools.embed_text`).

Prompts files, embeddings files and the text model folder may be remote (gs://...): they are
read through `shortcut_jax.storage` (`tools.embed_text`).
"""

import io
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from shortcut_jax import storage
from shortcut_jax.core.config_value import config_value

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_WORDS_NAME = "digit_words"
_WORD_SEED = 20250101  # Fixed: the vectors are part of the demo's data.


def uses_digit_words(data_config) -> bool:
  return config_value(data_config, "embeddings", section="data") == DIGIT_WORDS_NAME


def digit_word_vectors(dim: int) -> np.ndarray:
  """float32 [10, dim]: row c is the vector of DIGIT_WORDS[c] (unit variance per entry)."""
  if dim <= 0:
    raise ValueError(f"digit word vectors need data.embedding_dim > 0, got {dim}")
  return np.random.default_rng(_WORD_SEED).standard_normal((len(DIGIT_WORDS), dim)).astype(
      np.float32)


def digit_word_classes(prompts: Sequence[str]) -> np.ndarray:
  """The class of each prompt: the one digit word it contains (ValueError otherwise)."""
  out = []
  for p in prompts:
    words = [w for w in re.findall(r"[a-z]+", p.lower()) if w in DIGIT_WORDS]
    if len(set(words)) != 1:
      raise ValueError(f"prompt {p!r}: the digit-word model needs exactly one of "
                       f"{', '.join(DIGIT_WORDS)} in each prompt")
    out.append(DIGIT_WORDS.index(words[0]))
  return np.asarray(out, np.int32)


def default_prompts(data_config, num_images: int) -> Optional[List[str]]:
  """The prompts of `num_images` generated images when no prompts are given, where the text model
  defines them: the digit-word demo prompts image i with the word of class i % 10. None for other
  text models (their samples take the held-out captions' embeddings)."""
  if not uses_digit_words(data_config):
    return None
  return [DIGIT_WORDS[i % len(DIGIT_WORDS)] for i in range(num_images)]


DOWNLOAD_HINT = ("get a CLIP text model (e.g. `huggingface-cli download "
                 "openai/clip-vit-large-patch14 --local-dir /models/clip-vit-large-patch14`) and "
                 "pass its folder as --model")


def read_captions(path: str) -> Tuple[List[str], List[str]]:
  """(paths, captions) of a captions file (see the module docstring); blank lines skipped."""
  if not storage.isfile(path):
    raise FileNotFoundError(f"--captions: {path} does not exist")
  paths, captions = [], []
  with storage.open(path, "rb") as raw:
    for line in io.TextIOWrapper(raw, encoding="utf-8"):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      if "\t" in line:
        rel, caption = line.split("\t", 1)
      else:
        rel, caption = str(len(captions)), line
      paths.append(os.path.normpath(rel.strip()))
      captions.append(caption.strip())
  if not captions:
    raise ValueError(f"--captions: {path} holds no captions")
  return paths, captions


def load_text_model(folder: str):
  """(tokenizer, model, has_projection) from a local transformers folder; clear errors."""
  if not folder:
    raise ValueError(f"no --model given: {DOWNLOAD_HINT}")
  if not storage.isdir(folder):
    raise FileNotFoundError(f"--model: {folder} is not a folder; {DOWNLOAD_HINT}")
  try:
    import torch  # noqa: F401  pylint: disable=unused-import
    import transformers
  except ImportError as e:
    raise ImportError(f"embed_text needs torch and transformers ({e}); "
                      "pip install torch transformers") from e
  folder = storage.local_dir_copy(folder)  # transformers reads local folders only.
  config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
  text_config = getattr(config, "text_config", config)
  has_projection = getattr(config, "projection_dim", None) is not None and any(
      name.endswith("TextModelWithProjection") or name == "CLIPModel"
      for name in (config.architectures or []))
  cls = (transformers.CLIPTextModelWithProjection if has_projection
         else transformers.CLIPTextModel)
  model = cls.from_pretrained(folder, local_files_only=True, config=text_config
                              if cls is transformers.CLIPTextModel else config).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
  return tokenizer, model, has_projection


def embed(captions: List[str], tokenizer, model, has_projection: bool, *, batch_size: int = 64,
          max_length: int = 77, progress: bool = True) -> np.ndarray:
  """float32 [N, D] embeddings of `captions`, in batches, with a progress bar."""
  import torch
  from tqdm import tqdm
  out = []
  with torch.no_grad(), tqdm(total=len(captions), unit="caption", disable=not progress,
                             file=sys.stderr) as bar:
    for start in range(0, len(captions), batch_size):
      chunk = captions[start:start + batch_size]
      tokens = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length,
                         return_tensors="pt")
      result = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
      vectors = result.text_embeds if has_projection else result.pooler_output
      out.append(vectors.float().cpu().numpy())
      bar.update(len(chunk))
  return np.concatenate(out).astype(np.float32)



def prompt_classes(data_config, prompts: Sequence[str]) -> Optional[np.ndarray]:
  """The class each prompt asks for, where the text model knows it (the digit words), else None."""
  return digit_word_classes(prompts) if uses_digit_words(data_config) else None


def read_prompts(path: str) -> List[str]:
  """The non-blank lines of a UTF-8 prompts file (one prompt a line)."""
  _, captions = read_captions(path)
  return captions


def encode_prompts(data_config, prompts: Sequence[str]) -> np.ndarray:
  """float32 [len(prompts), data.embedding_dim] with the run's text model (module docstring)."""
  dim = int(config_value(data_config, "embedding_dim", section="data") or 0)
  if not dim:
    raise ValueError("this model was trained without embeddings (data.embedding_dim=0): it "
                     "cannot be prompted")
  if uses_digit_words(data_config):
    return digit_word_vectors(dim)[digit_word_classes(prompts)]
  folder = config_value(data_config, "text_model", section="data")
  if not folder:
    raise ValueError("prompts need the text model the training embeddings were made with: set "
                     f"--config.data.text_model=FOLDER in training, or pass --embeddings=NPY "
                     f"instead ({DOWNLOAD_HINT})")
  tokenizer, model, has_projection = load_text_model(folder)
  # The model's own context length (77 for CLIP), as the dataset's captions were embedded.
  length = int(getattr(model.config, "max_position_embeddings", 77))
  vectors = embed(list(prompts), tokenizer, model, has_projection,
                             max_length=min(77, length), progress=False)
  if vectors.shape[1] != dim:
    raise ValueError(f"data.text_model {folder} gives embeddings of size {vectors.shape[1]}, "
                     f"the model takes {dim}")
  return vectors


def load_embeddings_file(path: str, dim: int) -> np.ndarray:
  """float32 [N, dim] from an .npy array or an .npz with 'embedding' (e.g. `embed_text`'s)."""
  if not storage.isfile(path):
    raise FileNotFoundError(f"--embeddings: {path} does not exist")
  data = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
  if isinstance(data, np.lib.npyio.NpzFile):
    with data:
      if "embedding" not in data.files:
        raise ValueError(f"--embeddings: {path} has no 'embedding' array ({data.files})")
      data = data["embedding"]
  data = np.asarray(data, np.float32)
  if data.ndim == 1:
    data = data[None]
  if data.ndim != 2 or data.shape[1] != dim or not len(data):
    raise ValueError(f"--embeddings: {path} holds shape {data.shape}, the model takes "
                     f"[N, {dim}] (data.embedding_dim)")
  return data
