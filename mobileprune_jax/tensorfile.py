"""One safe, checksummed file of named arrays (the safetensors layout): data, never code.

Layout (readable by the ``safetensors`` library): an 8-byte little-endian header length N, N
bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the raw little-endian array bytes. ``__metadata__`` carries a SHA-256 of every array, one of
the rest of the header (``sha256:__header__``: entries and caller metadata, so a flipped bit in a
shape or in the caller's strings is caught too) and the caller metadata (JSON strings). Writing is atomic (temporary file, fsync, rename) and
byte-deterministic: the same arrays and metadata always give the same file. Reading checks
the header, every offset and every checksum before returning anything, and raises
``TensorFileError`` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import struct
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from mobileprune_jax import atomic

FORMAT = "mobileprune_jax/tensorfile/v1"
_MAX_HEADER = 64 * 1024 * 1024
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class TensorFileError(ValueError):
  """A tensor file that cannot be trusted (damaged, truncated, wrong format); one-line message."""


def _digest(data: bytes | memoryview) -> str:
  return hashlib.sha256(data).hexdigest()


def write(path: str | pathlib.Path, arrays: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
          before_commit: Callable[[], None] | None = None) -> str:
  """Writes ``arrays`` (name → array) atomically; returns the SHA-256 of the whole file.

  Args:
    path: the file to write (its directory must exist); replaced atomically if present.
    arrays: host or device arrays of the dtypes in ``_DTYPES`` (bfloat16 included).
    metadata: extra string entries for ``__metadata__`` (keys must not start with ``sha256:``).
    before_commit: called after the temporary file is complete, before it is renamed into place.
  """
  path = pathlib.Path(path)
  header: dict[str, Any] = {}
  meta = {"format": FORMAT}
  chunks, offset = [], 0
  for name in sorted(arrays):
    value = np.asarray(arrays[name], order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    dtype = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
    if dtype not in _NAMES:
      raise TypeError(f"tensorfile: array {name!r} has unsupported dtype {value.dtype}")
    data = value.astype(dtype, copy=False).tobytes()
    header[name] = {"dtype": _NAMES[dtype], "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
    meta[f"sha256:{name}"] = _digest(data)
    chunks.append(data)
    offset += len(data)
  for key, value in (metadata or {}).items():
    if key.startswith("sha256:") or key == "format":
      raise ValueError(f"tensorfile: metadata key {key!r} is reserved")
    meta[key] = str(value)
  header["__metadata__"] = meta
  meta[_HEADER_KEY] = _header_digest(header)
  head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)  # safetensors aligns the data to 8 bytes
  blob = struct.pack("<Q", len(head)) + head + b"".join(chunks)
  atomic.write_bytes(path, blob, before_commit)
  return _digest(blob)


_HEADER_KEY = "sha256:__header__"


def _is_count(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry(path: pathlib.Path, name: str, entry: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
  """(dtype, shape, begin, end) of one header entry: a known dtype name, a list of sizes ≥ 0, two offsets ≥ 0."""
  ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and entry["dtype"] in _DTYPES
  shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
  ok = ok and isinstance(shape, list) and all(map(_is_count, shape))
  ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
  if not ok:
    raise TensorFileError(f"{path}: damaged entry for {name!r} (dtype, shape or data_offsets)")
  return _DTYPES[entry["dtype"]], tuple(shape), offsets[0], offsets[1]


def _tiles(spans: list[tuple[int, int]], size: int) -> bool:
  """Whether the (begin, end) spans, sorted, lie back to back from 0 to ``size`` (what ``write`` makes)."""
  at = 0
  for begin, end in sorted(spans):
    if begin != at:
      return False
    at = end
  return at == size


def _header_digest(header: dict[str, Any]) -> str:
  """SHA-256 of the header's canonical JSON without its own digest."""
  meta = {k: v for k, v in header["__metadata__"].items() if k != _HEADER_KEY}
  return _digest(json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":")).encode())


def read(path: str | pathlib.Path, expected_sha256: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads and verifies a tensor file: ``(arrays, metadata)``.

  Raises:
    TensorFileError: missing, empty, truncated, not this format, an array outside the data,
      or any checksum (of an array, or of the whole file when ``expected_sha256`` is given)
      that does not match.
  """
  path = pathlib.Path(path)
  try:
    blob = path.read_bytes()
  except OSError as e:
    raise TensorFileError(f"{path}: cannot be read ({e.strerror or e})") from e
  if expected_sha256 is not None and _digest(blob) != expected_sha256:
    raise TensorFileError(f"{path}: checksum mismatch (the file was changed or damaged after it was written)")
  if len(blob) < 8:
    raise TensorFileError(f"{path}: {'empty' if not blob else 'truncated'} file ({len(blob)} bytes)")
  (n,) = struct.unpack("<Q", blob[:8])
  if n > min(_MAX_HEADER, len(blob) - 8):
    raise TensorFileError(f"{path}: truncated or not a tensor file (header length {n} of a {len(blob)}-byte file)")
  try:
    header = json.loads(blob[8 : 8 + n])
    meta = header["__metadata__"]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise TensorFileError(f"{path}: not a {FORMAT} file")
    if meta.get(_HEADER_KEY) != _header_digest(header):
      raise TensorFileError(f"{path}: checksum mismatch in the header (damaged metadata)")
    header.pop("__metadata__")
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError, TypeError, RecursionError) as e:
    raise TensorFileError(f"{path}: damaged header ({type(e).__name__})") from e
  data = memoryview(blob)[8 + n :]
  arrays: dict[str, np.ndarray] = {}
  spans = []
  for name, entry in header.items():
    dtype, shape, begin, end = _entry(path, name, entry)
    if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * dtype.itemsize:
      raise TensorFileError(f"{path}: array {name!r} lies outside the file (truncated or damaged)")
    spans.append((begin, end))
    chunk = data[begin:end]
    if _digest(chunk) != meta.get(f"sha256:{name}"):
      raise TensorFileError(f"{path}: checksum mismatch in array {name!r} (flipped or damaged bytes)")
    arrays[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape).copy()
  if not _tiles(spans, len(data)):
    raise TensorFileError(f"{path}: the arrays overlap or leave bytes unaccounted for (damaged offsets)")
  extra = {k: v for k, v in meta.items() if not k.startswith("sha256:") and k != "format"}
  for key, value in extra.items():
    if not isinstance(value, str):
      raise TensorFileError(f"{path}: metadata entry {key!r} is a JSON {type(value).__name__}, not a string")
  return arrays, extra
