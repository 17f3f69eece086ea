"""A lock on a workdir, so that two runs never write the same checkpoints.

``<workdir>/.lock`` holds the owner's pid and host and an advisory ``flock``. The kernel
releases the ``flock`` when its process dies (even by SIGKILL), so a lock left behind by a
dead run is taken over (with a warning naming the dead pid); a live holder makes the new run
refuse at once with ``WorkdirBusyError`` naming it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Callable

LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir; the message names its pid."""


class WorkdirError(ValueError):
  """A workdir the run cannot use (not a directory, not writable); the message is one line."""


def check_workdir(workdir: str | pathlib.Path) -> None:
  """Checks, before any work, that the run can write ``workdir`` and its ``checkpoints/``.

  Raises:
    WorkdirError: the workdir or ``checkpoints/`` is not a directory, or cannot be written (a read-only
      directory or file system; the nearest existing parent when the workdir does not exist yet).
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"workdir {workdir} exists and is not a directory")
  if (workdir / "checkpoints").exists() and not (workdir / "checkpoints").is_dir():
    raise WorkdirError(f"{workdir / 'checkpoints'} exists and is not a directory (the run keeps its checkpoints "
                       "there: move it away)")
  existing = workdir
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise WorkdirError(f"cannot create workdir {workdir}: {existing} is not a directory")
  for path in (existing, workdir / "checkpoints"):
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
      what = "workdir" if path == workdir else ("checkpoint directory" if path.name == "checkpoints" and
                                                 path.parent == workdir else f"parent of workdir {workdir}")
      raise WorkdirError(f"cannot write the {what} {path} (permission denied or a read-only file system)")


class WorkdirLock:
  """Context manager: holds ``<workdir>/.lock`` for the life of a run.

  Args:
    workdir: the run's workdir (created if missing).
    warn: where the one-line warning about taking over a dead run's lock goes.
    run: a number naming a multi-process run (``distributed.run_token``): written into the lock file, so that the
      run's other processes can check they belong to the run holding it (``check_member``).
  """

  def __init__(self, workdir: str | pathlib.Path, warn: Callable[[str], None] = print, run: int | None = None):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self.warn = warn
    self.run = run
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    if self.path.parent.exists() and not self.path.parent.is_dir():
      raise NotADirectoryError(f"workdir {self.path.parent} exists and is not a directory")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirBusyError(f"workdir {self.path.parent} is in use by another run (pid {holder.get('pid', '?')} "
                             f"on {holder.get('host', '?')}); wait for it or use another workdir") from None
    previous = _read_holder(fd)
    if previous.get("pid") not in (None, os.getpid()):
      self.warn(f"warning: taking over the lock of {self.path.parent} from pid {previous['pid']} "
                f"on {previous.get('host', '?')}, which is no longer running")
    os.ftruncate(fd, 0)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), **({"run": self.run} if self.run is not None else {})}
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release_for_exit(self) -> None:
    """Empties the lock file (a clean release, nothing to take over); the kernel drops the ``flock`` at exit."""
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
      except OSError:
        pass

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, nothing to take over
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def check_member(workdir: str | pathlib.Path, run: int) -> None:
  """In process i > 0 of a multi-process run: checks that the workdir lock is held for this very run.

  Raises:
    WorkdirBusyError: the lock names no run or another run (e.g. a workdir on a file system process 0 does not
      see, or a second job started on the same workdir).
  """
  path = pathlib.Path(workdir) / LOCK_FILE
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError as e:
    raise WorkdirBusyError(f"{path}: process 0 of this run holds no lock there ({e.strerror}); the workdir must be on "
                           "a file system every process sees") from None
  try:
    holder = _read_holder(fd)
  finally:
    os.close(fd)
  if holder.get("run") != run:
    raise WorkdirBusyError(f"workdir {path.parent} is held by another run (pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')}), not by process 0 of this one; the workdir must be on a file "
                           "system every process sees")


def _read_holder(fd: int) -> dict:
  try:
    data = os.pread(fd, 4096, 0)
    holder = json.loads(data) if data else {}
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}
