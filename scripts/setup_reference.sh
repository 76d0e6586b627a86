#!/usr/bin/env bash
# Creates .venv-reference (idempotent; meant to be sourced after scripts/setup.sh): the project's
# environment plus the reference implementations the comparison tests run against (torch,
# torchvision, pytorch-fid, diffusers, transformers, piq; about 6 GB). Kept apart from .venv so that
# training and the default tests never import torch. The project's own packages are shared with
# .venv through a .pth file, so only the reference packages are installed here.
if [ ! -x .venv-reference/bin/python ]; then
  python3 -m venv .venv-reference
fi
site=$(.venv-reference/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
base=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# addsitedir (not a bare path line) so that .venv's own .pth files (the editable install) count too.
echo "import site; site.addsitedir('$base')" > "$site/shortcut_jax_base_env.pth"
if ! .venv-reference/bin/python -c "import shortcut_jax, torch, torchvision, pytorch_fid, diffusers, transformers, piq, pytest" 2>/dev/null; then
  .venv-reference/bin/pip install -q --upgrade pip
  .venv-reference/bin/pip install -q torch==2.14.1 torchvision==0.29.1 pytorch-fid diffusers transformers piq
fi
# torch's GPU compiler (triton) is only used on GPUs, and loading it in a process that has
# jaxlib loaded crashes (a segmentation fault in triton's native library): CPU comparisons need
# torch without it.
if .venv-reference/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('triton') is None)" 2>/dev/null; then
  .venv-reference/bin/pip uninstall -q -y triton
fi
