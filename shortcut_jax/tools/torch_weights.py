"""Reading PyTorch `.pth` / `.pt` state dicts for the weight converters (torch imported lazily:
only the conversion tools need it). The file may be remote (gs://...): it is read through
`shortcut_jax.storage`."""

import io
from typing import Optional, Sequence

from shortcut_jax import storage


def load_torch_state_dict(path: str, safe_globals: Sequence[type] = (),
                          pick: Optional[str] = None) -> dict:
  """A `.pth` state dict as key -> numpy array; tensors only (`weights_only=True`: nothing is
  executed; `safe_globals` names the further plain classes a checkpoint may hold, e.g. an
  argparse.Namespace). A checkpoint that holds the state dict under 'state_dict', or under
  `pick` (e.g. 'ema' of a training checkpoint), gives that one."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Converting .pth files needs PyTorch (`pip install torch`, the CPU build "
                      "is enough); the rest of shortcut_jax does not.") from e
  with torch.serialization.safe_globals(list(safe_globals)):
    state_dict = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu",
                            weights_only=True)
  for key in (pick, "state_dict"):
    if key and isinstance(state_dict.get(key), dict):
      state_dict = state_dict[key]
      break
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items() if hasattr(v, "detach")}
