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

import sys

from absl import app
from absl import flags
import numpy as np

from shortcut_jax import console
from shortcut_jax import storage
# The library's side (text_encoders): also what this tool's users import from here.
from shortcut_jax.text_encoders import (DOWNLOAD_HINT, embed, load_text_model,  # noqa: F401
                                        read_captions)


def define_flags():
  """The command line's flags (defined only when run as a program: other tools that share
  flag names, e.g. `--out`, can then be imported next to this module)."""
  flags.DEFINE_string("captions", None, "Captions file (see the module docstring).")
  flags.DEFINE_string("model", None, "Local folder of a CLIP text model (transformers).")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_integer("batch_size", 64, "Captions per forward pass.")
  flags.DEFINE_integer("max_length", 77, "Token limit (CLIP's context is 77).")

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
