"""Text embeddings of captions with a CLIP text model, for text-conditioned training.

  python -m shortcut_jax.tools.embed_text --captions=captions.tsv \
      --model=/models/clip-vit-large-patch14 --out=embeddings.npz [--batch_size=64]

`--captions`: a UTF-8 text file, one caption per line, either `relative/image/path<TAB>caption`
(the path relative to the `image_folder` the embeddings are for) or the caption alone (its
line number, from 0, then stands for the path). `--model`: a local folder with a CLIP text model
and its tokenizer in the Hugging Face `transformers` layout (e.g. `openai/clip-vit-large-patch14`,
downloaded once with `huggingface-cli download openai/clip-vit-large-patch14 --local-dir
/models/clip-vit-large-patch14`). Output: an .npz with `paths` [N], `captions` [N] and
`embedding` float32 [N, D] — the projected text embedding (`text_embeds`) when the checkpoint
has a text projection, else the pooled output (the end-of-text token's final hidden state), as
the text-to-image shortcut project conditions on. Train on it with `data.name='image_folder'`,
`data.embeddings=embeddings.npz`, `data.embedding_dim=D`.

Any of the three may be remote (gs://...), read and written through `shortcut_jax.storage`; a
remote `--model` folder is downloaded once into a local cache (`storage.local_dir_copy`), since
`transformers` loads from local folders only.

Needs `torch` and `transformers` (not dependencies of the library: install them for this tool).
"""

import io
import os
import sys
from typing import List, Tuple

from absl import app
from absl import flags
import numpy as np

from shortcut_jax import console
from shortcut_jax import storage


def define_flags():
  """The command line's flags (defined only when run as a program: other tools that share
  flag names, e.g. `--out`, can then be imported next to this module)."""
  flags.DEFINE_string("captions", None, "Captions file (see the module docstring).")
  flags.DEFINE_string("model", None, "Local folder of a CLIP text model (transformers).")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_integer("batch_size", 64, "Captions per forward pass.")
  flags.DEFINE_integer("max_length", 77, "Token limit (CLIP's context is 77).")

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


def write_embeddings(out: str, paths, captions, embedding: np.ndarray) -> None:
  """Writes the .npz atomically (a partial file never has the final name)."""
  storage.write_npz(out, paths=np.asarray(paths), captions=np.asarray(captions),
                    embedding=embedding)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.captions or not f.out:
    raise app.UsageError("--captions and --out are required")
  try:
    paths, captions = read_captions(f.captions)
    tokenizer, model, has_projection = load_text_model(f.model)
  except (FileNotFoundError, ValueError, ImportError) as e:
    sys.exit(f"embed_text: {e}")
  embedding = embed(captions, tokenizer, model, has_projection, batch_size=f.batch_size,
                    max_length=f.max_length)
  write_embeddings(f.out, paths, captions, embedding)
  print(f"wrote {len(captions)} embeddings of size {embedding.shape[1]} to {f.out} "
        f"(set data.embeddings={f.out} data.embedding_dim={embedding.shape[1]})")


if __name__ == "__main__":
  define_flags()
  console.run(main)
