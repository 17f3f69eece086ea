"""Tensor files crafted with valid checksums but impossible entries are refused in one line, never half-read."""

import hashlib
import json
import struct

import numpy as np
import pytest

from mobileprune_jax import tensorfile


def _parts(tmp_path):
  path = tmp_path / "a.safetensors"
  tensorfile.write(path, {"b": np.ones(3, np.int8), "w": np.arange(8, dtype=np.float32).reshape(2, 4)}, {"k": "v"})
  blob = path.read_bytes()
  (n,) = struct.unpack("<Q", blob[:8])
  return json.loads(blob[8:8 + n]), blob[8 + n:]


def _craft(tmp_path, header, data):
  """A file whose header digest matches the (edited) header, as someone crafting a file would make it."""
  meta = header["__metadata__"]
  meta.pop("sha256:__header__")
  meta["sha256:__header__"] = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
                                             ).hexdigest()
  head = json.dumps(header).encode()
  path = tmp_path / "crafted.safetensors"
  path.write_bytes(struct.pack("<Q", len(head)) + head + data)
  return path


def test_the_crafting_helper_makes_files_that_read(tmp_path):
  header, data = _parts(tmp_path)
  arrays, meta = tensorfile.read(_craft(tmp_path, header, data))
  np.testing.assert_array_equal(arrays["w"], np.arange(8, dtype=np.float32).reshape(2, 4))
  assert meta == {"k": "v"}


@pytest.mark.parametrize("edit", [
    {"shape": [-2, -4]},  # numpy would read it as (2, 4) through the size check
    {"shape": "24"},
    {"shape": [2.5, 4]},
    {"shape": [True, 8]},
    {"shape": [[2], 4]},
    {"data_offsets": [3, 35, 0]},
    {"data_offsets": [3.0, 35]},
    {"data_offsets": [-1, 31]},
    {"dtype": ["F32"]},
    {"dtype": "F128"},
])
def test_impossible_entries_are_damaged_entries(tmp_path, edit):
  header, data = _parts(tmp_path)
  header["w"].update(edit)
  with pytest.raises(tensorfile.TensorFileError, match="damaged entry for 'w'"):
    tensorfile.read(_craft(tmp_path, header, data))


def test_overlapping_arrays_are_refused(tmp_path):
  header, data = _parts(tmp_path)  # b: bytes 0..3, w: 3..35
  header["b"]["data_offsets"] = [3, 6]  # b now reads w's first bytes, with their checksum
  header["__metadata__"]["sha256:b"] = hashlib.sha256(data[3:6]).hexdigest()
  with pytest.raises(tensorfile.TensorFileError, match="overlap or leave bytes"):
    tensorfile.read(_craft(tmp_path, header, data))


def test_trailing_bytes_are_refused(tmp_path):
  header, data = _parts(tmp_path)
  with pytest.raises(tensorfile.TensorFileError, match="overlap or leave bytes"):
    tensorfile.read(_craft(tmp_path, header, data + b"\0" * 8))
