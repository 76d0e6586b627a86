"""The reader of the original codebase's pickled checkpoints: real file, and hostile/corrupt ones."""

import os
import pickle

import numpy as np
import optax
import pytest

from shortcut_jax.checkpoints.legacy import LegacyCheckpointError, load_original_checkpoint


def test_reads_fixture(original_fixture_dir):
  ckpt = load_original_checkpoint(original_fixture_dir / "original_dit_small.pkl")
  assert ckpt["step"] == 6
  (adam, empty1, empty2), = ckpt["opt_state"]
  assert isinstance(adam, optax.ScaleByAdamState)
  assert isinstance(empty1, optax.EmptyState) and isinstance(empty2, optax.EmptyState)
  assert int(adam.count) == 5  # five updates were run from a fresh state
  kernel = ckpt["params"]["DiTBlock_0"]["Dense_0"]["kernel"]
  assert isinstance(kernel, np.ndarray) and kernel.dtype == np.float32 and kernel.shape == (64, 384)
  assert adam.mu["DiTBlock_0"]["Dense_0"]["kernel"].shape == (64, 384)
  # EMA rate 0.5 over five steps: the EMA weights differ from the online ones.
  assert not np.allclose(kernel, ckpt["params_ema"]["DiTBlock_0"]["Dense_0"]["kernel"])


def test_truncated_file(original_fixture_dir, tmp_path):
  data = (original_fixture_dir / "original_dit_small.pkl").read_bytes()
  path = tmp_path / "truncated.pkl"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(LegacyCheckpointError, match="truncated or corrupt"):
    load_original_checkpoint(path)


def test_random_bytes(tmp_path):
  path = tmp_path / "random.pkl"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(LegacyCheckpointError):
    load_original_checkpoint(path)


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_executes_nothing(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"train_state": _Exploit(marker)}))
  with pytest.raises(LegacyCheckpointError, match="refusing to load global"):
    load_original_checkpoint(path)
  assert not marker.exists()


def test_foreign_pickle_and_missing_file(tmp_path):
  path = tmp_path / "other.pkl"
  path.write_bytes(pickle.dumps({"weights": {"a": 1}}))
  with pytest.raises(LegacyCheckpointError, match="missing train_state"):
    load_original_checkpoint(path)
  with pytest.raises(FileNotFoundError):
    load_original_checkpoint(tmp_path / "nope.pkl")
