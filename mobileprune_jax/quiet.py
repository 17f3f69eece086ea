"""Native log lines hidden: TensorFlow's C++ start-up and converter messages, written to file descriptor 2.

TensorFlow 2.21 writes them ("oneDNN custom operations are on", "Could not find cuda drivers", "failed call to
cuInit", "Ignored output_format", "Created TensorFlow Lite XNNPACK delegate") before absl logging is set up, so
``TF_CPP_MIN_LOG_LEVEL`` does not hide them. ``native_stderr_hidden()`` points descriptor 2 at ``os.devnull``
for the duration of such a call; errors still arrive as Python exceptions. ``MOBILEPRUNE_JAX_NATIVE_LOGS=1``
shows them. ``stderr_fd()`` is the real standard error, for a signal handler that must still be heard.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_saved_fd: int | None = None


def stderr_fd() -> int:
  """The descriptor of the real standard error (2 unless it is hidden right now)."""
  return _saved_fd if _saved_fd is not None else 2


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
  """Descriptor 2 goes to ``os.devnull`` inside the block (not nested: an inner block does nothing)."""
  global _saved_fd
  if _saved_fd is not None or os.environ.get("MOBILEPRUNE_JAX_NATIVE_LOGS") == "1":
    yield
    return
  try:
    sys.stderr.flush()
  except Exception:  # noqa: BLE001 - a closed or detached stream: nothing buffered to lose
    pass
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  _saved_fd = saved
  try:
    yield
  finally:
    os.dup2(saved, 2)
    _saved_fd = None
    os.close(saved)
    os.close(devnull)
