"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed files)."""

from __future__ import annotations

import gzip
import math
import pathlib
import struct
import zlib

import numpy as np

from mobileprune_jax.data.errors import InvalidDataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# where Debian's dataset-fashion-mnist puts the files
KNOWN_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}


def read_idx(path: str | pathlib.Path) -> np.ndarray:
  """Reads one IDX file: magic (0, 0, dtype=0x08 uint8, ndim), big-endian dims, data."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise InvalidDataError(f"{path}: damaged compressed file ({e})") from None
  if len(data) < 4:
    raise InvalidDataError(f"{path}: not an IDX file ({len(data)} bytes)")
  zero, dtype, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype != 0x08 or len(data) < 4 + 4 * ndim:
    raise InvalidDataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
  dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != math.prod(dims):  # Python integers: crafted dims cannot wrap around to the file's size
    raise InvalidDataError(f"{path}: expected {math.prod(dims)} values for dims {dims}, found {array.size}")
  return array.reshape(dims)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    if (directory / name).exists():
      return directory / name
  return None


def find_idx_dir(name: str) -> str | None:
  """A directory known to hold ``name``'s IDX files on this machine, if any."""
  for d in KNOWN_DIRS.get(name, []):
    if pathlib.Path(d).is_dir() and _find(pathlib.Path(d), FILES["train_images"]):
      return d
  return None


def load_idx_dataset(directory: str | pathlib.Path):
  """((train_images, train_labels), (test_images, test_labels)) from a directory of IDX files."""
  directory = pathlib.Path(directory)
  paths = {}
  for key, stem in FILES.items():
    path = _find(directory, stem)
    if path is None:
      raise FileNotFoundError(f"{directory}: missing {stem}[.gz]")
    paths[key] = path
  arrays = {k: read_idx(p) for k, p in paths.items()}
  return (arrays["train_images"], arrays["train_labels"]), (arrays["test_images"], arrays["test_labels"])
