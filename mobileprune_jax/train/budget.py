"""Pruning to a budget: one global multiplier on the penalty, adapted to the measured size.

Targets are fractions of the dense model (config ``budget.nonzero``, ``budget.params``,
``budget.macs``; unset = no budget):

    nonzero = non-zero parameters of the shrunk model / parameters of the dense model
    params  = parameters of the shrunk model / parameters of the dense model
    macs    = MACs of the shrunk model (non-zero taps only) / MACs of the dense model

— the numbers ``summary.json`` reports (``nonzero_params``, ``params_remaining``, ``macs_pruned``
over ``params_total``, ``macs_dense``), measured the same way (``surgery.shrink`` + ``metrics``).

The first penalised phase starts at the multiplier whose shrink, accumulated over the ramp's
steps, would reach the target, when that is below 1 (``Controller.start``). During the phases that carry the penalty (MobilePrune and the prox baselines' pruning, prox-SGD
or PALM; DEGL/EGL selection) the controller runs every ``interval`` steps. It is predictive: it
looks for the multiplier m whose prox, applied to the current weights at the phase's step size,
gives a model of the wanted size (measured as the phase's end would leave it: for DEGL after its
threshold), by bisection on log m (the size falls as m grows). The wanted size follows a cubic
ramp from the dense model to the target over the first ``ramp`` of the first penalised phase
(gradual, like Zhu & Gupta's schedule) and is the target after that. A model already smaller
than wanted cannot be grown by a prox: then m ← m / 2^gain lets the gradient regrow weights.

``m`` multiplies every coefficient of the regulariser as an array argument of the step (no
recompilation) and is part of the checkpointed run state, so a resumed run continues with the
same multiplier. At the end of the last penalised phase, a model still above the tolerance keeps only the
support of one prox step at the bisected multiplier (the survivors keep their values), so the
run lands on the target. A model that ended below the tolerance (a prox cannot grow it; PALM, whose
steps 1/(γL) are several times prox-SGD's, regrows weights whenever the multiplier drops and loses them
when it rises, so its size oscillates around the target) is first reset to the last state the
controller measured at or above the target during the controlled phases (kept by ``train.steering``
and checkpointed with the run), then trimmed the same way: no run ends below its target.
With several targets, the binding one (largest ratio) lands on its target, the others below theirs.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mobileprune_jax import groups, metrics, surgery
from mobileprune_jax.regularisers import Regulariser, base

KINDS = ("nonzero", "params", "macs")
FAR_LANDING = 2.0  # a landing that starts this many times above the target warns: one step then trims more than half


class BudgetNotReachedError(RuntimeError):
  """The run finished outside the budget's tolerance (its outputs are written)."""


def targets(cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """The set budget targets of a config, e.g. {"nonzero": 0.02}."""
  return {k: float(cfg.budget[k]) for k in KINDS if cfg.budget[k] is not None}


@dataclasses.dataclass(frozen=True)
class DenseSize:
  """The dense model's totals the fractions are taken of."""

  params: int
  macs: int

  @classmethod
  def of(cls, model: nnx.Module, sample) -> DenseSize:
    stats = metrics.layer_stats(model, sample)
    return cls(metrics.count_params(nnx.state(model, nnx.Param)), sum(s.macs_dense for s in stats))


def fractions(nonzero: int, params: int, macs: int, dense: DenseSize) -> dict[str, float]:
  """The budgeted quantities of a shrunk model as fractions of the dense model."""
  return {"nonzero": nonzero / dense.params, "params": params / dense.params, "macs": macs / max(dense.macs, 1)}


def measure(model: nnx.Module, sample, dense: DenseSize, round_to: int = 1) -> dict[str, float]:
  """Fractions of the dense model after shrinking (widths rounded to ``round_to``): {"nonzero", "params", "macs"}
  (as ``summary.json``)."""
  shrunk, _ = surgery.shrink_with_report(model, sample, check=False, round_to=round_to)
  params = nnx.state(shrunk, nnx.Param)
  macs = sum(s.macs_sparse for s in metrics.layer_stats(shrunk, sample))
  return fractions(metrics.count_nonzero(params), metrics.count_params(params), macs, dense)


def ratio(measured: dict[str, float], wanted: dict[str, float]) -> float:
  """max over targets of measured / target (> 1: too large)."""
  return max(measured[k] / wanted[k] for k in wanted)


def next_multiplier(base: float, r: float, gain: float, proportional: float) -> tuple[float, float]:
  """(new base, applied multiplier): base · r^gain, and base' · r^p, p = proportional (4 × proportional when r < 1); r in [1/4, 4], r^p in [1/64, 4].

  The size reacts to the multiplier like an integrator (the penalty sets how fast groups shrink,
  not how many survive), so the applied multiplier is mostly proportional to the log size error —
  it relaxes to the base as soon as the model reaches the wanted size, and falls far below it when
  the model is smaller than wanted (nothing can be regrown by a prox, so pruning must stop) — and
  the base adapts slowly to the multiplier that holds the size there.
  """
  log_r = min(max(math.log(max(r, 1e-12)), -math.log(4)), math.log(4))
  new_base = base * math.exp(gain * log_r)
  push = proportional * log_r * (1 if log_r > 0 else 4)  # below the wanted size: stop pruning at once
  return new_base, new_base * math.exp(min(max(push, -math.log(64)), math.log(4)))


def wanted_fraction(target: float, progress: float, ramp: float) -> float:
  """target^f, f = progress / ramp (capped at 1): a geometric ramp from 1 (dense) to the target."""
  f = min(progress / ramp, 1.0) if ramp > 0 else 1.0
  return target ** f


def _fractions(sizes: dict[str, float]) -> str:
  return ", ".join(f"{k}={100 * v:.3g} %" for k, v in sizes.items())


def bisect_multiplier(ratio_at: Callable[[float], float], multiplier: float, span: float = 16.0,
                      iterations: int = 10) -> float | None:
  """The m in [m/span, m·span] where ``ratio_at`` (non-increasing in m) crosses 1, on a log scale.

  Returns None when even the smallest m gives a ratio ≤ 1 (the model is already small enough: a
  prox cannot grow it), and m·span when even the largest m leaves the ratio > 1.
  """
  lo, hi = math.log(multiplier / span), math.log(multiplier * span)
  if ratio_at(math.exp(lo)) <= 1:
    return None
  if ratio_at(math.exp(hi)) > 1:
    return math.exp(hi)
  for _ in range(iterations):
    mid = (lo + hi) / 2
    if ratio_at(math.exp(mid)) > 1:
      lo = mid
    else:
      hi = mid
  return math.exp(hi)


def report(measured: dict[str, float], wanted: dict[str, float], multiplier: float, tolerance: float) -> dict[str, Any]:
  """The summary's ``budget`` entry: targets, reached fractions, multiplier, and whether each is within tolerance."""
  within = {k: measured[k] <= wanted[k] * (1 + tolerance) for k in wanted}
  binding = max(wanted, key=lambda k: measured[k] / wanted[k])
  within[binding] = within[binding] and measured[binding] >= wanted[binding] * (1 - tolerance)
  return {"target": dict(wanted), "reached": {k: measured[k] for k in wanted}, "multiplier": multiplier,
          "tolerance": tolerance, "within_tolerance": all(within.values())}


def summary_budget(cfg: ml_collections.ConfigDict, summary: dict[str, Any], multiplier: float) -> dict[str, Any] | None:
  """The ``budget`` entry from a finished run's summary numbers (None without a budget)."""
  wanted = targets(cfg)
  if not wanted:
    return None
  measured = fractions(summary["nonzero_params"], summary["params_remaining"], summary["macs_pruned"],
                       DenseSize(summary["params_total"], summary["macs_dense"]))
  return report(measured, wanted, multiplier, cfg.budget.tolerance)


def check_reached(entry: dict[str, Any] | None, name: str) -> None:
  """Raises ``BudgetNotReachedError`` (one line) when a run's budget entry is out of tolerance."""
  if entry is None or entry["within_tolerance"]:
    return
  parts = ", ".join(f"{k} {100 * entry['reached'][k]:.3g} % (target {100 * v:.3g} %)" for k, v in entry["target"].items())
  raise BudgetNotReachedError(
      f"{name}: the budget was not reached within ±{100 * entry['tolerance']:.0f} %: {parts}, final multiplier "
      f"{entry['multiplier']:.4g}; lengthen the pruning (prune.epochs) or start from coefficients nearer the target "
      "(the outputs are written)")


Preview = Callable[[nnx.Module], Any]


@dataclasses.dataclass
class Controller:
  """Adapts the penalty multiplier so that a model lands on size targets — in the pipeline or any loop::

      controller = budget.Controller.for_model(model, sample, nonzero=0.02)
      base = m = controller.start(model, regulariser, step_size, steps=total)
      for step in range(total):
        ...  # optimizer.update(model, grads, penalty_multiplier=m)  (transforms / with_prox)
        if step % 50 == 49:
          base, m = controller.update(model, base, progress=step / total)
      m = controller.land(model, regulariser, step_size, m)   # trims to the target if still too large
      controller.report(model, m)                            # target, reached, multiplier, within_tolerance

  ``base`` and ``m`` are the caller's state (checkpoint them). ``preview``: an action the phase's
  end applies to the model (DEGL's threshold); sizes are measured after it, on a copy.
  """

  targets: dict[str, float]
  dense: DenseSize
  sample: Any
  tolerance: float = 0.1
  gain: float = 0.15
  proportional: float = 3.0
  ramp: float = 0.6
  round_to: int = 1  # the size is the shrunk model's with widths rounded to multiples of this (surgery.shrink)
  _prox_fns: dict = dataclasses.field(default_factory=dict, repr=False)
  _warned: list = dataclasses.field(default_factory=list, repr=False)  # regularisers already found out of reach

  @classmethod
  def for_model(cls, model: nnx.Module, sample, *, nonzero: float | None = None, params: float | None = None,
                macs: float | None = None, **settings) -> Controller:
    """A controller for fractions of ``model``'s current (dense) size.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from mobileprune_jax import regularisers
      >>> from mobileprune_jax.train import budget
      >>> class MLP(nnx.Module):
      ...   def __init__(self, rngs=nnx.Rngs(0)):
      ...     self.fc1, self.fc2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.fc2(nnx.relu(self.fc1(x)))
      >>> model, x = MLP(), jnp.ones((8, 4))
      >>> reg = regularisers.group_lasso(neuron=1.0).for_model(model, x)
      >>> controller = budget.Controller.for_model(model, x, params=0.7)  # ≤ 70 % of the parameters
      >>> m = controller.land(model, reg, step_size=0.1, multiplier=1e-3)  # one prox step, multiplier bisected
      >>> report = controller.report(model, m)
      >>> report["within_tolerance"], round(report["reached"]["params"], 3)
      (True, 0.642)
    """
    wanted = {k: v for k, v in (("nonzero", nonzero), ("params", params), ("macs", macs)) if v is not None}
    if not wanted or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in wanted.values()):
      raise ValueError(f"budget targets must be fractions in (0, 1], at least one; got {wanted or 'none'}")
    return cls({k: float(v) for k, v in wanted.items()}, DenseSize.of(model, sample), sample, **settings)

  def measure(self, model: nnx.Module, preview: Preview | None = None) -> dict[str, float]:
    """The budgeted fractions of ``model`` (after ``preview`` on a copy)."""
    if preview is not None:
      model = nnx.clone(model)
      preview(model)
    measured = measure(model, self.sample, self.dense, self.round_to)
    return {k: measured[k] for k in self.targets}

  def update(self, model: nnx.Module, base: float, progress: float | None = None,
             preview: Preview | None = None) -> tuple[float, float]:
    """(new base, multiplier to apply) from the measured size.

    Aims 3·tolerance above the target (the size keeps falling for a while after the penalty eases;
    ``land`` trims from above), along the geometric ramp at ``progress`` ∈ [0, 1] of the pruning (None:
    the ramp is over).
    """
    return self.update_from(self.measure(model, preview), base, progress)

  def update_from(self, measured: dict[str, float], base: float, progress: float | None = None) -> tuple[float, float]:
    """``update`` from a size already measured (``measure``)."""
    aim = 1 + 3 * self.tolerance
    wanted = {k: v * aim for k, v in self.targets.items()}
    if progress is not None:
      wanted = {k: wanted_fraction(v, progress, self.ramp) for k, v in wanted.items()}
    return next_multiplier(base, ratio(measured, wanted), self.gain, self.proportional)

  def at_or_above(self, measured: dict[str, float]) -> bool:
    """Whether a model of this size can still be landed on the targets by trimming (ratio ≥ 1)."""
    return ratio(measured, self.targets) >= 1

  def below_tolerance(self, measured: dict[str, float]) -> bool:
    """Whether a model of this size is too small for the targets' tolerance (``land`` then uses its fallback)."""
    return ratio(measured, self.targets) < 1 - self.tolerance

  def start(self, model: nnx.Module, regulariser: Regulariser, step_size: float, steps: int,
            preview: Preview | None = None) -> float:
    """A starting multiplier: min(1, m₁ / ``steps``), where one prox step at m₁ would take ``model`` to the target.

    Coefficients far too strong for the target are scaled down before the first step: penalties whose
    shrink accumulates (ℓ1, group terms) then need about ``steps`` steps to reach the target (a start
    at m = 1 with coefficients 100× too strong removed whole layers before the first measurement).
    Weaker coefficients keep m = 1 and the controller raises it (×4 per update): a prox cannot regrow
    what an early overshoot removed, so the start only ever lowers the penalty (m₁ / steps > 1 overshot
    group lasso, whose groups die before the accumulated shrink reaches m₁). For ℓ0 (no accumulation)
    the start is low and the controller raises it.
    """
    aim = {k: v * (1 + 3 * self.tolerance) for k, v in self.targets.items()}
    prox, params = self._prox(regulariser, step_size), nnx.state(model, nnx.Param)

    seen: dict[float, dict[str, float]] = {}

    def sizes_at(m: float) -> dict[str, float]:
      if m not in seen:
        candidate = nnx.clone(model)
        nnx.update(candidate, prox(params, jnp.float32(m)))
        seen[m] = self.measure(candidate, preview)
      return seen[m]

    self.check_reach(model, regulariser, preview)
    one_step = bisect_multiplier(lambda m: ratio(sizes_at(m), aim), 1.0, span=1e6, iterations=24)
    return 1.0 if one_step is None else min(1.0, one_step / max(steps, 1))

  def check_reach(self, model: nnx.Module, regulariser: Regulariser, preview: Preview | None = None) -> bool:
    """Whether the targets are within ``regulariser``'s reach; warns (once per regulariser) when they are not.

    The floor is the size with every leaf the penalty acts on at zero: layers it does not penalise and
    channels surgery must keep stay, so no multiplier takes the model below it. It hardly depends on the
    weights, so the pipeline checks before any training (``Steering``) and ``start`` checks again.
    """
    floor = self._floor(model, regulariser, nnx.state(model, nnx.Param), preview)
    reachable = ratio(floor, self.targets) <= 1 + self.tolerance
    if not reachable and not any(r is regulariser for r in self._warned):
      self._warned.append(regulariser)
      warnings.warn(f"budget {_fractions(self.targets)} is out of this penalty's reach: with everything it penalises "
                    f"at zero the model keeps {_fractions(floor)} (layers it does not penalise and channels surgery "
                    "must keep stay); the run will end above its target", stacklevel=3)
    return reachable

  def _floor(self, model: nnx.Module, regulariser: Regulariser, params: Any, preview: Preview | None) -> dict[str, float]:
    """The size with every leaf the penalty acts on set to zero: no multiplier takes the model below it."""
    roles = iter(regulariser.roles(params))
    candidate = nnx.clone(model)
    nnx.update(candidate, jax.tree.map(lambda p: p if next(roles) == "none" else jnp.zeros_like(p), params))
    return self.measure(candidate, preview)

  def _prox(self, regulariser: Regulariser, step_size: float):
    key = (id(regulariser), float(step_size))
    if key not in self._prox_fns:
      self._prox_fns[key] = jax.jit(lambda p, m: regulariser.prox(p, step_size, multiplier=m))
    return self._prox_fns[key]

  def land(self, model: nnx.Module, regulariser: Regulariser, step_size: float, multiplier: float,
           preview: Preview | None = None, fallback: Any = None) -> float:
    """A model above target·(1 + tolerance/2) keeps only the support of prox_{s·m*·R}, m* bisected to land on it.

    A model below target·(1 − tolerance) cannot be trimmed back up: with ``fallback`` (the state,
    ``nnx.state(model)``, of the last model measured at or above the target) the model is first set to it
    and trimmed from there, so a run whose size oscillates around the target (PALM's large steps regrow
    weights when the multiplier drops, then lose them again) still ends on it.

    The weights the prox at m* zeroes are zeroed; the others keep their values, and a kernel the trim would
    empty keeps its strongest unit (``spare_emptied_kernels``: one step must not cut the network in two). (Applying the prox
    itself would also shrink every surviving group by the large m*'s threshold: on the last phase of
    a run, EGL's penalised retraining, that step left LeNet-300 at chance accuracy.) The penalty still
    decides what goes: the groups and weights its prox removes first.

    Returns the multiplier in force afterwards (``multiplier`` when nothing was done).
    """
    measured = self.measure(model, preview)
    if fallback is not None and self.below_tolerance(measured):
      nnx.update(model, jax.tree.map(jnp.asarray, fallback))
      measured = self.measure(model, preview)
    if ratio(measured, self.targets) <= 1 + self.tolerance / 2:
      return multiplier
    if ratio(measured, self.targets) > FAR_LANDING:
      warnings.warn(f"the landing starts at {_fractions(measured)} for a target of {_fractions(self.targets)}: one "
                    "step removes most of what the pruning left, which usually costs accuracy; prune longer or with "
                    "stronger coefficients so that the pruning itself comes near the target", stacklevel=2)
    prox, params = self._prox(regulariser, step_size), nnx.state(model, nnx.Param)

    roles = groups.leaf_roles(params, list(regulariser.rules or []) + groups.rules_for_model(model))

    axes = dict(regulariser.reader_axes or {})
    reader_axes = [axes.get(path) for path in groups.leaf_paths(params)]

    def landed(m: float) -> Any:
      trimmed = jax.tree.map(lambda p, q: jnp.where(q != 0, p, jnp.zeros_like(p)), params, prox(params, jnp.float32(m)))
      return spare_emptied_kernels(params, trimmed, roles, reader_axes)

    def ratio_at(m: float) -> float:
      candidate = nnx.clone(model)
      nnx.update(candidate, landed(m))
      return ratio(self.measure(candidate, preview), self.targets)

    landing = bisect_multiplier(ratio_at, multiplier, span=1e6, iterations=24)
    if landing is None:  # even a vanishing penalty's prox lands below the target: leave the model as it is
      return multiplier
    nnx.update(model, landed(landing))
    return landing

  def report(self, model: nnx.Module, multiplier: float, preview: Preview | None = None) -> dict[str, Any]:
    """Target, reached fractions, multiplier and whether the binding target is within the tolerance."""
    return report(self.measure(model, preview), self.targets, multiplier, self.tolerance)


# the units a kernel of each role reads (axis 0 of its layout's split): MobilePrune's per-layer groups
_UNITS_OF = {"dense": base.ROWS, "conv": base.CHANNEL_TREES, "conv_out_in": base.CHANNEL_TREES_OUT_IN,
             "depthwise": base.DEPTHWISE_TREES, "heads_in": base.HEADS_IN, "heads_out": base.HEADS_OUT}


def spare_emptied_kernels(before: Any, after: Any, roles: list[str], reader_axes: Sequence[int | None] | None = None
                          ) -> Any:
  """``after`` where every kernel that ``before`` had non-zero and ``after`` zeroes entirely keeps its strongest unit.

  A unit is what the layer reads through one input (a dense row, an input channel's filter taps, a depthwise
  channel, a head), the one with the largest ‖·‖₂ in ``before``, with ``before``'s values. Like Torch-Pruning's
  pruners, which keep at least one channel per layer: a landing that empties a kernel (a classifier whose rows
  are weaker than every conv unit, removed in one step) leaves a network whose output no longer depends on its
  input. Leaves of other roles (biases, normalisation) are left as ``after`` has them. ``reader_axes``: per leaf,
  its input axis when the kernel is not in its role's layout (``Regulariser.reader_axes``), else None.
  """
  leaves_before, treedef = jax.tree.flatten(before)
  leaves_after = treedef.flatten_up_to(after)
  out = []
  for k, (role, b, a) in enumerate(zip(roles, leaves_before, leaves_after)):
    layout = _UNITS_OF.get(role)
    if layout is None or not bool(jnp.any(b != 0)) or bool(jnp.any(a != 0)):
      out.append(a)
      continue
    axis = reader_axes[k] if reader_axes else None
    split = layout.split if axis is None else (lambda w, axis=axis: jnp.moveaxis(w, axis, 0))
    units = split(b)
    units = units.reshape(units.shape[0], -1)
    strongest = int(jnp.argmax(jnp.sum(jnp.square(units.astype(jnp.float32)), axis=1)))
    position = split(jnp.arange(b.size).reshape(b.shape)).reshape(units.shape[0], -1)[strongest]
    keep = jnp.zeros(b.size, bool).at[position].set(True).reshape(b.shape)
    out.append(jnp.where(keep, b, a))
  return treedef.unflatten(out)
