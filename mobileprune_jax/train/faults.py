"""Fault injection for the resume tests: SIGKILL this process at a named point of a run.

``MOBILEPRUNE_JAX_KILL_AT="NAME:N"`` kills the process (``SIGKILL``, as a preempted machine
would) the N-th time the run passes ``kill_point("NAME")``. Unset, a point costs one
dictionary look-up. Points: ``saved`` (a checkpoint was committed), ``checkpoint_write``
(a checkpoint file is written but not yet renamed into place), ``epoch_end`` (all steps of
an epoch done, before its evaluation), ``phase_end`` (before a phase's action),
``phase_start`` (a phase-start checkpoint was committed), ``finish`` (before the finishing
stages), ``finish_model`` (``model/`` written, ``summary.json`` not yet).
"""

from __future__ import annotations

import os
import signal

ENV = "MOBILEPRUNE_JAX_KILL_AT"
_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
  target = os.environ.get(ENV)
  if not target:
    return
  want, _, count = target.partition(":")
  if want != name:
    return
  _counts[name] = _counts.get(name, 0) + 1
  if _counts[name] == int(count or 1):
    os.kill(os.getpid(), signal.SIGKILL)
