"""``RunState``: where a run is, checkpointed together with the model and optimizer state.

A run is a sequence of phases; inside a phase, epochs of ``steps`` mini-batches. The state
after ``k`` completed steps of epoch ``e`` of phase ``p`` is ``(p, e, k)`` plus the running
sums of the epoch's training numbers (so a resumed epoch logs the mean over all of its steps)
and the log written so far. ``phase == len(phases)`` means every phase is done and only the
finishing stages (shrink, save, export, summary) remain; they are redone from that state.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any


class StateError(ValueError):
  """A stored run state that does not fit the run (out of range, wrong types)."""


@dataclasses.dataclass
class RunState:
  """Progress of a run.

  Attributes:
    phase: index of the current phase (``len(phases)``: all phases done).
    epoch: completed epochs of the current phase.
    step: completed steps of the current epoch.
    global_step: steps completed over the whole run (sets the checkpoint cadence).
    loss_sum: sum of the training losses of the current epoch's completed steps.
    loss_count: how many losses are in ``loss_sum``.
    lipschitz_sum: PALM: sum of the per-step mean backtracked Lipschitz estimates.
    base_accuracy: test accuracy after pretraining (None before).
    log: the entries of ``log.jsonl`` so far (the file is rewritten from them on resume).
    multiplier: the budget controller's multiplier on the penalty (1 without a budget; see ``budget``).
    multiplier_base: the controller's slowly adapted (integral) part of the multiplier.
  """

  phase: int = 0
  epoch: int = 0
  step: int = 0
  global_step: int = 0
  loss_sum: float = 0.0
  loss_count: int = 0
  lipschitz_sum: float = 0.0
  base_accuracy: float | None = None
  log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  multiplier: float = 1.0
  multiplier_base: float = 1.0

  def start_epoch(self, epoch: int) -> None:
    self.epoch, self.step = epoch, 0
    self.loss_sum, self.loss_count, self.lipschitz_sum = 0.0, 0, 0.0

  def start_phase(self, phase: int) -> None:
    self.phase = phase
    self.start_epoch(0)

  @property
  def mean_loss(self) -> float | None:
    return self.loss_sum / self.loss_count if self.loss_count else None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))  # key order kept: log entries are rewritten as they were

  @classmethod
  def from_json(cls, text: str) -> RunState:
    try:
      raw = json.loads(text)
      if not isinstance(raw, dict):
        raise TypeError("not an object")
      state = cls(**raw)
    except (json.JSONDecodeError, TypeError) as e:
      raise StateError(f"run state is not readable ({e})") from e
    state._check_types()
    return state

  def _check_types(self) -> None:
    for name in ("phase", "epoch", "step", "global_step", "loss_count"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StateError(f"run state field {name} = {value!r} is not a non-negative integer")
    for name in ("loss_sum", "lipschitz_sum"):
      if not isinstance(getattr(self, name), (int, float)):
        raise StateError(f"run state field {name} is not a number")
    if self.base_accuracy is not None and not (isinstance(self.base_accuracy, (int, float))
                                                and 0 <= self.base_accuracy <= 1):
      raise StateError(f"run state base_accuracy = {self.base_accuracy!r} is not an accuracy")
    for name in ("multiplier", "multiplier_base"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise StateError(f"run state {name} = {value!r} is not a positive number")
    if not isinstance(self.log, list) or not all(isinstance(e, dict) for e in self.log):
      raise StateError("run state log is not a list of entries")

  def check_fits(self, epochs_of_phase: Sequence[int], steps_of_epoch) -> None:
    """Raises StateError unless this state is a position the run can be at.

    Args:
      epochs_of_phase: the number of epochs of each phase.
      steps_of_epoch: ``(phase, epoch) -> steps`` in that epoch.
    """
    n = len(epochs_of_phase)
    if self.phase > n:
      raise StateError(f"phase {self.phase} is past the run's {n} phases")
    if self.phase == n:
      if self.epoch or self.step:
        raise StateError(f"a finished run with epoch {self.epoch}, step {self.step}")
      return
    epochs = epochs_of_phase[self.phase]
    if self.epoch > epochs:
      raise StateError(f"epoch {self.epoch} of phase {self.phase}, which has {epochs}")
    limit = steps_of_epoch(self.phase, self.epoch) if self.epoch < epochs else 0
    if self.step > limit:
      raise StateError(f"step {self.step} of an epoch with {limit} steps")
    if self.loss_count > self.step or not math.isfinite(self.loss_sum):
      raise StateError("the epoch's loss sums do not fit its step count")
