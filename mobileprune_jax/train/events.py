"""Named points of a run that code outside the library can watch: ``add_hook(fn)``; ``fn(name)`` is called as the
run passes each point.

Points: ``saved`` (a checkpoint was committed), ``checkpoint_write`` (a checkpoint file is written but not yet
renamed into place), ``epoch_end`` (all steps of an epoch done, before its evaluation), ``phase_end`` (before a
phase's action), ``phase_start`` (a phase-start checkpoint was committed), ``finish`` (before the finishing
stages), ``finish_model`` (``model/`` written, ``summary.json`` not yet). The resume tests kill the process at
these points (``tests/kill_at.py``); with no hook a point costs one empty loop.
"""

from __future__ import annotations

from collections.abc import Callable

POINTS = ("saved", "checkpoint_write", "epoch_end", "phase_end", "phase_start", "finish", "finish_model")
_hooks: list[Callable[[str], None]] = []


def add_hook(hook: Callable[[str], None]) -> Callable[[], None]:
  """Calls ``hook(name)`` at every point a run passes from now on; returns a function that removes it."""
  _hooks.append(hook)
  return lambda: _hooks.remove(hook) if hook in _hooks else None


def reached(name: str) -> None:
  """The run passes point ``name`` (one of ``POINTS``)."""
  for hook in tuple(_hooks):
    hook(name)
