"""Checkpoints that cannot lie: one checksummed tensor file per save, validated on restore.

``checkpoints/ckpt-00000042.safetensors`` holds the model's and the phase optimizer's arrays
(``model/…``, ``optimizer/…``), the ``RunState`` and a fingerprint of the config, with a
SHA-256 of every array (``tensorfile``). A save is atomic and refuses non-finite arrays (NaN
anywhere, ±inf in the model), so every file on disk is finite and rotation (keep the newest ``keep``) never deletes the last
finite one. ``restore_latest`` walks from the newest file to the oldest: a damaged or
inconsistent file (or one holding non-finite values, e.g. forged with matching checksums) is reported in one
line and the next older one is tried. Entries named like a checkpoint that are not regular files are
ignored with a warning.

Several processes (``train/distributed.py``): this format, extended, rather than orbax-checkpoint. The run's state
is data-parallel (params and optimizer state replicated), so every process already holds every array and the
"gather" is a local copy (``tree_arrays.host_array``; an array sharded over processes would be all-gathered);
process 0 writes the one file and the others wait at a barrier; on restore every process reads the same file
and the run replicates it over the mesh. The file keeps the guarantees the project's tests check (checksums,
fallback to the previous file, nothing non-finite, exact resume) with no second format to validate. Orbax is
the choice once state is sharded (model parallelism, states larger than one host's memory): then each
process should write only its shards.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from mobileprune_jax import tensorfile, tree_arrays
from mobileprune_jax.config import leaves
from mobileprune_jax.train import events
from mobileprune_jax.train.state import RunState, StateError

_NAME = re.compile(r"^ckpt-(\d{8})\.safetensors$")


class CheckpointError(RuntimeError):
  """No usable checkpoint although some exist; the message is one line."""


class NonFiniteError(FloatingPointError):
  """Arrays that would have been saved hold NaN or inf (nothing was written)."""


# (state, arrays, items saved) -> what the loader built from them (e.g. the phase's optimizer); raises StateError /
# StateMismatchError when the file does not fit
Loader = Callable[[RunState, dict[str, np.ndarray], list[str]], Any]


class Restored(NamedTuple):
  """What ``restore_latest`` restored: the run state, the file, and what the loader built from it."""

  state: RunState
  path: pathlib.Path
  loaded: Any


class Checkpoints:
  """The checkpoints of one workdir.

  Args:
    directory: ``<workdir>/checkpoints`` (created on the first save).
    keep: how many of the newest checkpoints to keep (at least 1).
    warn: where one-line warnings about damaged files go.
  """

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, warn: Callable[[str], None] = print):
    self.directory = pathlib.Path(directory)
    self.keep = max(int(keep), 1)
    self.warn = warn

  def paths(self) -> list[pathlib.Path]:
    """Checkpoint files, oldest first (entries named like one that are not regular files are left alone)."""
    return [p for p in self._named() if p.is_file() and not p.is_symlink()]

  def _named(self) -> list[pathlib.Path]:
    if not self.directory.is_dir():
      return []
    return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

  def warn_about_strangers(self) -> None:
    """One warning per entry named like a checkpoint that is not a regular file (ignored; never deleted)."""
    for p in self._named():
      if not p.is_file() or p.is_symlink():
        kind = "a symbolic link" if p.is_symlink() else "a directory" if p.is_dir() else "not a regular file"
        self.warn(f"warning: ignoring {p}: it is {kind}, not a checkpoint (remove it; new checkpoints are numbered "
                  "after it)")

  def exists(self) -> bool:
    return bool(self.paths())

  def remove_partial_writes(self) -> None:
    """Deletes temporary files left by a save that was killed (call while holding the workdir lock)."""
    if self.directory.is_dir():
      for p in self.directory.glob(".ckpt-*.tmp-*"):
        if p.is_file() or p.is_symlink():
          p.unlink(missing_ok=True)

  def save(self, state: RunState, items: Mapping[str, Any], fingerprint: str,
           write: bool = True) -> pathlib.Path | None:
    """Writes a new checkpoint of ``items`` (name → pytree of arrays) and ``state``.

    Arrays sharded over several processes are gathered (every process calls ``save``); only the process with
    ``write`` (process 0) writes the file and returns its path, the others check the same arrays and return None.

    Raises:
      NonFiniteError: the model holds NaN or inf, or another item NaN (±inf is a legitimate optimizer-state
        sentinel: ``reduce_on_plateau`` starts its best loss at +inf); nothing is written.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, tree in items.items():
      arrays |= tree_arrays.to_arrays(tree, prefix=f"{name}/")
    _check_finite(arrays)
    if not write:
      return None
    self.directory.mkdir(parents=True, exist_ok=True)
    existing = self._named()  # numbered after anything named like a checkpoint: never onto a stranger's name
    index = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1
    path = self.directory / f"ckpt-{index:08d}.safetensors"
    tensorfile.write(path, arrays, {"run_state": state.to_json(), "config": fingerprint,
                                    "items": json.dumps(sorted(items))},
                     before_commit=lambda: events.reached("checkpoint_write"))
    for old in self.paths()[: -self.keep]:  # regular files only
      old.unlink(missing_ok=True)
    return path

  def restore_latest(self, fingerprint: str, load: Loader) -> Restored | None:
    """Loads the newest usable checkpoint through ``load``; None when there is none at all.

    ``load`` applies the arrays to the model (and the phase optimizer it builds) and raises
    ``StateError`` / ``StateMismatchError`` when they do not fit; such a file, like a damaged
    one, is reported with ``warn`` and the next older file is tried.

    Raises:
      CheckpointError: checkpoints exist but none is usable.
      ConfigMismatchError: the checkpoints were written by a run with another config.
    """
    paths = self.paths()
    errors = []
    for path in reversed(paths):
      try:
        arrays, meta = tensorfile.read(path)
        for key in ("run_state", "config", "items"):
          if key not in meta:
            raise StateError(f"metadata has no {key!r}")
        state = RunState.from_json(meta["run_state"])
        items = json.loads(meta["items"])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
          raise StateError(f"metadata 'items' is not a list of names: {meta['items'][:80]!r}")
        if meta["config"] != fingerprint:
          raise ConfigMismatchError(_config_difference(meta["config"], fingerprint, self.directory.parent))
        _check_finite(arrays)
        return Restored(state, path, load(state, arrays, items))
      except (tensorfile.TensorFileError, StateError, tree_arrays.StateMismatchError, json.JSONDecodeError,
              NonFiniteError) as e:
        message = str(e) if str(path) in str(e) else f"{path}: {e}"
        errors.append(message)
        self.warn(f"warning: skipping a damaged checkpoint: {message}")
    if paths:
      raise CheckpointError(f"no usable checkpoint in {self.directory} ({len(paths)} tried; newest: {errors[0]})")
    return None


def _check_finite(arrays: Mapping[str, np.ndarray]) -> None:
  """Raises ``NonFiniteError`` for NaN anywhere or ±inf in the model (optimizer state may hold ±inf sentinels)."""
  for name, value in arrays.items():
    if value.dtype.kind != "f":
      continue
    bad = ~np.isfinite(value) if name.startswith("model/") else np.isnan(value)
    if bad.any():
      raise NonFiniteError(f"{name} holds {int(np.sum(bad))} non-finite values")


class ConfigMismatchError(ValueError):
  """The workdir's checkpoints come from a different config."""


def _config_difference(saved: str, current: str, workdir: pathlib.Path) -> str:
  try:
    a, b = dict(leaves(json.loads(saved))), dict(leaves(json.loads(current)))
  except json.JSONDecodeError:
    return f"{workdir} was started with a different config"
  keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
  value = lambda d, k: repr(d[k]) if k in d else "its default"  # the fingerprint leaves out keys at their default
  shown = ", ".join(f"{k}: {value(a, k)} -> {value(b, k)}" for k in keys[:4]) + (" ..." if len(keys) > 4 else "")
  return (f"{workdir} was started with a different config ({shown}); resume with the same config and overrides, "
          "or use a new workdir")
