"""Reading PyTorch `.pth` state dicts for the weight converters (torch imported lazily: only the
conversion tools need it). The file may be remote (gs://...): it is read through
`shortcut_jax.storage`."""

import io

from shortcut_jax import storage


def load_torch_state_dict(path: str) -> dict:
  """A `.pth` state dict (or a checkpoint holding one under 'state_dict') as key -> numpy array;
  tensors only (`weights_only=True`: nothing is executed)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Converting .pth files needs PyTorch (`pip install torch`, the CPU build "
                      "is enough); the rest of shortcut_jax does not.") from e
  state_dict = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu",
                          weights_only=True)
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
    state_dict = state_dict["state_dict"]
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
