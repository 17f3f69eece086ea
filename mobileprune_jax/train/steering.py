"""The budget during a run, in one place: when the controller acts, on which phases, and what it records.

The controller (``budget.Controller``) decides multipliers from the model; ``Steering`` applies it to the run's
schedule. The budget state is the run state's ``multiplier`` / ``multiplier_base`` and the *anchor*: the model
state at the last control point where the size was at or above the target, the landing's fallback when a run ends
below it (``Controller.land``). Both are checkpointed (the anchor as the item ``budget_anchor``); every decision is
a function of the model and the run's position, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from flax import nnx

from mobileprune_jax import tree_arrays
from mobileprune_jax.train import budget
from mobileprune_jax.train.phases import Phase
from mobileprune_jax.train.state import RunState

ANCHOR = "budget_anchor"  # the checkpoint item holding the anchor


class Steering:
  """A budget's controller bound to a run's phases.

  Args:
    cfg: the run config (``budget`` section, ``round_to``).
    model: the model being trained (its dense size is measured now, before any training).
    sample: a batch of inputs for tracing.
    phases: the run's phases.
    steps_per_epoch: mini-batches per epoch.
    record: appends an entry to the run's log.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, model: nnx.Module, sample: Any, phases: Sequence[Phase],
               steps_per_epoch: int, record: Callable[[dict[str, Any]], None]):
    b = cfg.budget
    self.targets = budget.targets(cfg)
    self.controller = budget.Controller(self.targets, budget.DenseSize.of(model, sample), sample, b.tolerance, b.gain,
                                        b.proportional, b.ramp, round_to=cfg.round_to)
    self.ramp = b.ramp
    self.every = b.interval or max(1, steps_per_epoch // 8)
    self.phases, self.steps_per_epoch, self.record = phases, steps_per_epoch, record
    self.first = next((i for i, p in enumerate(phases) if p.controlled), None)
    self.anchor: Any = None  # host copy of nnx.state(model) at the last control point at or above the target
    if self.first is not None:  # an unreachable target is reported before any training, not after pretraining
      first = phases[self.first]
      self.controller.check_reach(model, first.regulariser, first.on_end)

  @classmethod
  def for_run(cls, cfg: ml_collections.ConfigDict, *args, **kwargs) -> Steering | None:
    """A ``Steering`` when the config asks for a budget, else None."""
    return cls(cfg, *args, **kwargs) if budget.targets(cfg) else None

  def _steps(self, phase: Phase, epochs: int | None = None) -> int:
    n = phase.epochs_with(self.steps_per_epoch) if epochs is None else epochs
    return sum(phase.steps_in_epoch(e, self.steps_per_epoch) for e in range(n))

  def phase_starts(self, model: nnx.Module, state: RunState) -> None:
    """At the very start of the first penalised phase: the starting multiplier."""
    if state.phase != self.first or state.epoch or state.step:
      return
    phase = self.phases[state.phase]
    m = self.controller.start(model, phase.regulariser, phase.step_size, max(1, int(self.ramp * self._steps(phase))),
                              phase.on_end)
    state.multiplier = state.multiplier_base = m
    self.record({"phase": phase.name, "event": "budget_start", "penalty_multiplier": m})

  def step_done(self, model: nnx.Module, state: RunState) -> None:
    """After a step of a controlled phase, every ``budget.interval`` steps: one controller update."""
    phase = self.phases[state.phase]
    if not phase.controlled or state.global_step % self.every:
      return
    progress = None
    if state.phase == self.first:  # the wanted size ramps down over the first penalised phase
      done = self._steps(phase, state.epoch) + state.step
      progress = done / max(self._steps(phase), 1)
    measured = self.controller.measure(model, phase.on_end)
    if self.controller.at_or_above(measured):
      self.anchor = tree_arrays.host_copy(nnx.state(model))
    state.multiplier_base, state.multiplier = self.controller.update_from(measured, state.multiplier_base, progress)

  def items(self) -> dict[str, Any]:
    """What a checkpoint holds for the budget besides the run state: the anchor, while there is one."""
    return {ANCHOR: self.anchor} if self.anchor is not None else {}

  def restore(self, anchor: Any) -> None:
    """The anchor a checkpoint held (None: it held none)."""
    self.anchor = anchor

  def epoch_entry(self, model: nnx.Module, state: RunState) -> dict[str, Any]:
    """What a penalised phase's epoch log entry adds: the multiplier and the size reached."""
    phase = self.phases[state.phase]
    if not phase.scaled:
      return {}
    return {"penalty_multiplier": state.multiplier, "budget_reached": self.controller.measure(model, phase.on_end)}

  def phase_ends(self, model: nnx.Module, state: RunState) -> None:
    """At the end of the last penalised phase: a model above the tolerance is trimmed to the target (the landing)."""
    phase = self.phases[state.phase]
    if not phase.lands:
      return
    before = self.controller.measure(model, phase.on_end)
    from_anchor = self.anchor is not None and self.controller.below_tolerance(before)
    m = self.controller.land(model, phase.regulariser, phase.step_size, state.multiplier, phase.on_end,
                             fallback=self.anchor)
    self.anchor = None  # landed: later phases train the landed model's support
    if m != state.multiplier or from_anchor:  # a one-off trim: later penalised phases (EGL's retraining) keep m
      entry = {"phase": phase.name, "event": "budget_landing", "penalty_multiplier": m,
               "budget_reached": self.controller.measure(model, phase.on_end)}
      if from_anchor:
        entry |= {"from_anchor": True, "budget_reached_before": before}
      self.record(entry)
