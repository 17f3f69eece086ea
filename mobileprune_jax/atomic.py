"""Files that appear whole or not at all: write a temporary file beside the target, fsync, rename over it."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable


def write_bytes(path: str | pathlib.Path, data: bytes, before_commit: Callable[[], None] | None = None) -> None:
  """Writes ``data`` to ``path`` atomically (a reader sees the old file or the new one, never a part).

  ``before_commit`` runs after the data are on disk and before the rename (the resume tests kill there).

  Raises:
    OSError: naming ``path`` (write errors such as a full disk or "File too large" carry no file name).
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    tmp.unlink(missing_ok=True)
    if e.filename is None:
      raise OSError(e.errno, f"{e.strerror or e} while writing {path} ({len(data):,} bytes)") from None
    raise
  try:
    if before_commit is not None:
      before_commit()
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  fsync_directory(path.parent)


def write_text(path: str | pathlib.Path, text: str) -> None:
  """``write_bytes`` of ``text`` in UTF-8."""
  write_bytes(path, text.encode())


def fsync_directory(directory: pathlib.Path) -> None:
  """Makes a rename in ``directory`` durable (where the platform allows opening a directory)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
